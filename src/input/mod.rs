//! Input readers; only the nix2container reader lives in this worktree.

pub mod nix2container;
