#!/usr/bin/env bash
# Installs overlayfuse under PREFIX (default /usr/local): the binary (where mount.fuse3 finds
# it for `mount -t fuse.overlayfuse` and fstab lines), its manual pages, and completions for
# bash, zsh and fish. Usage: sudo tools/install.sh [PREFIX]
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${1:-/usr/local}
cargo install --locked --path . --root "$prefix"
bin="$prefix/bin/overlayfuse"
install -d "$prefix/share/man/man1" "$prefix/share/bash-completion/completions" \
  "$prefix/share/zsh/site-functions" "$prefix/share/fish/vendor_completions.d"
"$bin" manpages "$prefix/share/man/man1"
"$bin" completions bash >"$prefix/share/bash-completion/completions/overlayfuse"
"$bin" completions zsh >"$prefix/share/zsh/site-functions/_overlayfuse"
"$bin" completions fish >"$prefix/share/fish/vendor_completions.d/overlayfuse.fish"
echo "installed $bin, its manual pages and completions under $prefix"
