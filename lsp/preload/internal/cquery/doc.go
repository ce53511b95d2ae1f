// Package cquery compiles the preload library's reply parser
// (lsp/preload/src/query.c: ipv_parse_header, ipv_parse_answer) into Go, so
// that its table tests and fuzz target run with `go test` and compare it
// with the daemon-side codec in backend/wire. The library itself is built by
// lsp/preload/Makefile; nothing ships this package. Without cgo it is empty.
package cquery
