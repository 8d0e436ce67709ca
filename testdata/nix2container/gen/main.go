// Vector generator for manifold's nix2container tests (Go standard library
// only). Modes:
//
//	go run . headers ../header-cases-more.json ../header-cases-more.expected.json
//	go run . tree ../tree-fixture.json ../tree-fixture.expected.json
//	go run . regex ../regex-cases.json ../regex-cases.expected.json
//	go run . layers spec.json out.json
//
// "headers" writes each entry of a header-case list with archive/tar, the
// header settings documented for nix2container layers (formats.md §2.1:
// ModTime 1 s, Access/ChangeTime epoch, Format unset), alone and all
// together, and records sha256 and size of each tar.
//
// "tree" builds the fixture's store under a temporary directory, then
// synthesises the layer tar the way nix2container does (nix/tar.go,
// nix/graph.go, nix/utils.go): filepath.Walk with lstat, case-hack
// stripping (optional) before rewrite, Go regexp rewrite and perms, a
// component tree, depth-first sorted emission, archive/tar headers.
// "layers" does the same synthesis for store paths that already exist (the
// benchmark's fake store, bench/make_fixture.py): spec.json is
// {"layers": [{"paths": [{"path", "options"?}], "out"?: FILE}]}, regexes
// used as given; out.json gets {"sha256", "size"} per layer, and the tar is
// also written to "out" when set (the benchmark's docker-archive stand-in).
// "regex" records, for each (regex, hex input, repl), Go's Match and
// ReplaceAll: the RE2 semantics rewrite and perms rely on.
//
// "@ROOT@" in the fixture stands for the temporary directory (quoted in
// regexes); every path is rewritten so the tar is independent of it.
package main

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type Case struct {
	Name, Link, Data   string
	NameHex, LinkHex   string
	Type               string
	Mode               int64
	Uid, Gid           int
	Uname, Gname       string
	Devmajor, Devminor int64
}

type Sum struct {
	Sha256 string `json:"sha256"`
	Size   int    `json:"size"`
}

func caseHeader(e Case) *tar.Header {
	name, link := e.Name, e.Link
	if e.NameHex != "" {
		b, err := hex.DecodeString(e.NameHex)
		check(err)
		name = string(b)
	}
	if e.LinkHex != "" {
		b, err := hex.DecodeString(e.LinkHex)
		check(err)
		link = string(b)
	}
	return &tar.Header{Name: name, Typeflag: e.Type[0], Mode: e.Mode, Linkname: link,
		Uid: e.Uid, Gid: e.Gid, Uname: e.Uname, Gname: e.Gname, Size: int64(len(e.Data)),
		Devmajor: e.Devmajor, Devminor: e.Devminor,
		ModTime:    time.Date(1970, 1, 1, 0, 0, 1, 0, time.UTC),
		AccessTime: time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC),
		ChangeTime: time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC)}
}

type sumWriter struct {
	h interface {
		io.Writer
		Sum([]byte) []byte
	}
	n int
}

func (s *sumWriter) Write(p []byte) (int, error) { s.n += len(p); return s.h.Write(p) }
func (s *sumWriter) sum() Sum {
	return Sum{Sha256: "sha256:" + hex.EncodeToString(s.h.Sum(nil)), Size: s.n}
}
func newSum() *sumWriter { return &sumWriter{h: sha256.New()} }

func check(err error) {
	if err != nil {
		panic(err)
	}
}

func headers(in, out string) {
	var cases []Case
	b, err := os.ReadFile(in)
	check(err)
	check(json.Unmarshal(b, &cases))
	all := newSum()
	tall := tar.NewWriter(all)
	var each []Sum
	for _, e := range cases {
		one := newSum()
		t := tar.NewWriter(one)
		for _, tw := range []*tar.Writer{t, tall} {
			check(tw.WriteHeader(caseHeader(e)))
			_, err := tw.Write([]byte(e.Data))
			check(err)
		}
		check(t.Close())
		each = append(each, one.sum())
	}
	check(tall.Close())
	res := map[string]interface{}{"all": all.sum(), "cases": each}
	j, err := json.MarshalIndent(res, "", "  ")
	check(err)
	check(os.WriteFile(out, append(j, '\n'), 0o644))
}

// ---- tree mode ----

type Perm struct {
	Regex string `json:"regex"`
	Mode  string `json:"mode"`
	Uid   int    `json:"uid"`
	Gid   int    `json:"gid"`
	Uname string `json:"uname"`
	Gname string `json:"gname"`
}

type Rewrite struct {
	Regex string `json:"regex"`
	Repl  string `json:"repl"`
}

type Options struct {
	Rewrite Rewrite `json:"rewrite"`
	Perms   []Perm  `json:"perms"`
}

type Path struct {
	Path    string   `json:"path"`
	Options *Options `json:"options"`
}

type File struct {
	Path, PathHex, Type, Target, Data string
	Mode                              uint32
}

type Variant struct {
	Name          string `json:"name"`
	StripCaseHack bool   `json:"strip_case_hack"`
	Paths         []Path `json:"paths"`
}

type Fixture struct {
	Files    []File    `json:"files"`
	Variants []Variant `json:"variants"`
}

func (f File) rel() string {
	if f.PathHex != "" {
		b, err := hex.DecodeString(f.PathHex)
		check(err)
		return string(b)
	}
	return f.Path
}

func build(root string, files []File) {
	var dirs []File
	for _, f := range files {
		p := filepath.Join(root, f.rel())
		switch f.Type {
		case "dir":
			check(os.MkdirAll(p, 0o755))
			dirs = append(dirs, f)
		case "file":
			check(os.WriteFile(p, []byte(f.Data), 0o644))
			check(os.Chmod(p, os.FileMode(f.Mode&0o777)|goSpecial(f.Mode)))
		case "symlink":
			check(os.Symlink(f.Target, p))
		case "hardlink":
			check(os.Link(filepath.Join(root, f.Target), p))
		case "fifo":
			check(syscall.Mkfifo(p, f.Mode))
		default:
			panic("unknown type " + f.Type)
		}
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		p := filepath.Join(root, dirs[i].rel())
		check(os.Chmod(p, os.FileMode(dirs[i].Mode&0o777)|goSpecial(dirs[i].Mode)))
	}
}

func goSpecial(m uint32) os.FileMode {
	var r os.FileMode
	if m&0o4000 != 0 {
		r |= os.ModeSetuid
	}
	if m&0o2000 != 0 {
		r |= os.ModeSetgid
	}
	if m&0o1000 != 0 {
		r |= os.ModeSticky
	}
	return r
}

type node struct {
	src      string
	seen     string
	info     os.FileInfo
	opts     *Options
	contents map[string]*node
}

func unhack(name string) string {
	parts := strings.Split(name, "~nix~case~hack~")
	if len(parts) == 2 {
		idx, err := strconv.ParseInt(parts[1], 10, 64)
		if err == nil && idx >= 1 {
			return parts[0]
		}
	}
	return name
}

func stripCaseHack(p string) string {
	parts := strings.Split(p, "/")
	for i := range parts {
		parts[i] = unhack(parts[i])
	}
	return strings.Join(parts, "/")
}

func splitPath(p string) []string {
	parts := strings.Split(filepath.Clean(p), "/")
	if len(parts) == 2 && parts[0] == "" && parts[1] == "" {
		return []string{""}
	}
	return parts
}

func addFile(root *node, src string, info os.FileInfo, opts *Options, strip bool) error {
	seen := src
	if strip {
		seen = stripCaseHack(src)
	}
	dst := seen
	if opts != nil && opts.Rewrite.Regex != "" {
		dst = string(regexp.MustCompile(opts.Rewrite.Regex).ReplaceAll([]byte(seen), []byte(opts.Rewrite.Repl)))
	}
	if dst == "" {
		return nil
	}
	cur := root
	for _, part := range splitPath(dst) {
		n, ok := cur.contents[part]
		if !ok {
			n = &node{contents: map[string]*node{}}
			cur.contents[part] = n
		}
		cur = n
	}
	if cur.info != nil {
		if cur.info.Mode() != info.Mode() {
			return fmt.Errorf("mode collision on %s", dst)
		}
		if cur.info.Mode().IsRegular() && cur.info.Size() != info.Size() {
			return fmt.Errorf("size collision on %s", dst)
		}
	}
	if cur.opts != nil && !reflect.DeepEqual(cur.opts.Perms, opts.Perms) {
		return fmt.Errorf("perms collision on %s", dst)
	}
	cur.info, cur.opts, cur.src, cur.seen = info, opts, src, seen
	return nil
}

func emit(tw *tar.Writer, base string, n *node) {
	keys := make([]string, 0, len(n.contents))
	for k := range n.contents {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		c := n.contents[k]
		dst := filepath.Join(base, k)
		if k == "" {
			dst = "/"
		}
		one := time.Date(1970, 1, 1, 0, 0, 1, 0, time.UTC)
		epoch := time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC)
		if c.info == nil {
			check(tw.WriteHeader(&tar.Header{Name: dst, Typeflag: tar.TypeDir, Mode: 0o755,
				Uname: "root", Gname: "root", ModTime: one, AccessTime: epoch, ChangeTime: epoch}))
		} else {
			link := ""
			if c.info.Mode()&os.ModeSymlink != 0 {
				l, err := os.Readlink(c.src)
				check(err)
				link = l
			}
			hdr, err := tar.FileInfoHeader(c.info, link)
			check(err)
			hdr.Name = dst
			hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "root", "root"
			if link != "" {
				hdr.Mode = 0o777
			}
			if c.opts != nil {
				for _, p := range c.opts.Perms {
					if regexp.MustCompile(p.Regex).Match([]byte(c.seen)) {
						hdr.Uid, hdr.Gid = p.Uid, p.Gid
						if p.Uname != "" {
							hdr.Uname = p.Uname
						}
						if p.Gname != "" {
							hdr.Gname = p.Gname
						}
						if p.Mode != "" {
							_, err := fmt.Sscanf(p.Mode, "%o", &hdr.Mode)
							check(err)
						}
					}
				}
			}
			hdr.ModTime, hdr.AccessTime, hdr.ChangeTime = one, epoch, epoch
			check(tw.WriteHeader(hdr))
			if c.info.Mode().IsRegular() {
				f, err := os.Open(c.src)
				check(err)
				_, err = io.Copy(tw, f)
				check(err)
				f.Close()
			}
		}
		emit(tw, dst, c)
	}
}

func subst(s, root string, quote bool) string {
	if quote {
		return strings.ReplaceAll(s, "@ROOT@", regexp.QuoteMeta(root))
	}
	return strings.ReplaceAll(s, "@ROOT@", root)
}

func tree(in, out string) {
	var fx Fixture
	b, err := os.ReadFile(in)
	check(err)
	check(json.Unmarshal(b, &fx))
	root, err := os.MkdirTemp("", "n2c-tree")
	check(err)
	defer os.RemoveAll(root)
	build(root, fx.Files)
	res := map[string]Sum{}
	for _, v := range fx.Variants {
		g := &node{contents: map[string]*node{}}
		for _, p := range v.Paths {
			var opts *Options
			if p.Options != nil {
				o := *p.Options
				o.Rewrite.Regex = subst(o.Rewrite.Regex, root, true)
				o.Perms = nil
				for _, pm := range p.Options.Perms {
					pm.Regex = subst(pm.Regex, root, true)
					o.Perms = append(o.Perms, pm)
				}
				opts = &o
			}
			check(filepath.Walk(subst(p.Path, root, false), func(path string, info os.FileInfo, err error) error {
				if err != nil {
					return err
				}
				return addFile(g, path, info, opts, v.StripCaseHack)
			}))
		}
		s := newSum()
		tw := tar.NewWriter(s)
		emit(tw, "", g)
		check(tw.Close())
		res[v.Name] = s.sum()
	}
	j, err := json.MarshalIndent(res, "", "  ")
	check(err)
	check(os.WriteFile(out, append(j, '\n'), 0o644))
}

type RegexCase struct {
	Regex    string `json:"regex"`
	InputHex string `json:"input_hex"`
	Repl     string `json:"repl"`
}

type RegexResult struct {
	Match       bool   `json:"match"`
	ReplacedHex string `json:"replaced_hex"`
}

func regexCases(in, out string) {
	var cases []RegexCase
	b, err := os.ReadFile(in)
	check(err)
	check(json.Unmarshal(b, &cases))
	var res []RegexResult
	for _, c := range cases {
		re := regexp.MustCompile(c.Regex)
		src, err := hex.DecodeString(c.InputHex)
		check(err)
		res = append(res, RegexResult{Match: re.Match(src),
			ReplacedHex: hex.EncodeToString(re.ReplaceAll(src, []byte(c.Repl)))})
	}
	j, err := json.MarshalIndent(res, "", "  ")
	check(err)
	check(os.WriteFile(out, append(j, '\n'), 0o644))
}

type LayerSpec struct {
	Paths []Path `json:"paths"`
	Out   string `json:"out"`
}

func layers(in, out string) {
	var spec struct {
		Layers []LayerSpec `json:"layers"`
	}
	b, err := os.ReadFile(in)
	check(err)
	check(json.Unmarshal(b, &spec))
	var res []Sum
	for _, l := range spec.Layers {
		g := &node{contents: map[string]*node{}}
		for _, p := range l.Paths {
			opts := p.Options
			if opts == nil {
				opts = &Options{}
			}
			check(filepath.Walk(p.Path, func(path string, info os.FileInfo, err error) error {
				if err != nil {
					return err
				}
				return addFile(g, path, info, opts, false)
			}))
		}
		s := newSum()
		var w io.Writer = s
		var f *os.File
		if l.Out != "" {
			f, err = os.Create(l.Out)
			check(err)
			w = io.MultiWriter(s, f)
		}
		tw := tar.NewWriter(w)
		emit(tw, "", g)
		check(tw.Close())
		if f != nil {
			check(f.Close())
		}
		res = append(res, s.sum())
	}
	j, err := json.MarshalIndent(res, "", "  ")
	check(err)
	check(os.WriteFile(out, append(j, '\n'), 0o644))
}

func main() {
	switch os.Args[1] {
	case "headers":
		headers(os.Args[2], os.Args[3])
	case "tree":
		tree(os.Args[2], os.Args[3])
	case "regex":
		regexCases(os.Args[2], os.Args[3])
	case "layers":
		layers(os.Args[2], os.Args[3])
	default:
		panic("usage: headers|tree|regex|layers IN OUT")
	}
}
