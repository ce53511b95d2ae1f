#!/bin/bash
# Fails when git tracks a build output: any ELF file except the eBPF objects
# bpf2go generates (lsp/bpf/*_bpfel.o), committed so that building needs no
# clang. Reads the index, so a staged binary fails before it is committed.
set -eu
cd "$(dirname "$0")/.."
git rev-parse --is-inside-work-tree >/dev/null

status=0
# Each record: "mode object stage<TAB>i/<eol> w/<eol> attr/<attr> <TAB>path".
while IFS= read -r -d '' entry; do
	meta=${entry%%$'\t'*}
	rest=${entry#*$'\t'}
	eol=${rest%%$'\t'*}
	path=${rest#*$'\t'}
	# An ELF header has NUL bytes, so git counts every ELF as non-text:
	# only those blobs need reading.
	[[ $eol == i/-text* ]] || continue
	read -r mode object _ <<<"$meta"
	[ "$mode" = 160000 ] && continue # a submodule: no blob here
	# The header's first 20 bytes: the magic, then e_machine at offset 18.
	head=$(git cat-file blob "$object" | head -c 20 | od -An -tx1 | tr -d ' \n')
	[ "${head:0:8}" = 7f454c46 ] || continue
	if [[ $path == lsp/bpf/*_bpfel.o && $path != lsp/bpf/*/* ]]; then
		# e_machine 247 (EM_BPF), little-endian: an eBPF object, not a
		# host binary under a bpf2go name.
		[ "${head:36:4}" = f700 ] && continue
	fi
	echo "check-tracked: $path is an ELF build output; git rm --cached it (.gitignore keeps build outputs out)" >&2
	status=1
done < <(git ls-files -s -z --eol)
exit $status
