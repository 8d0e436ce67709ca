module manifold/testdata/n2cgen

go 1.19
