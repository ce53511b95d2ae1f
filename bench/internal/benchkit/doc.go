// Package benchkit is what the connect benchmarks under bench/ share: the
// C programs they time (built into a temporary directory, never the
// tree), a listener that records where each connection came from, running
// a program inside a login session, and order statistics.
package benchkit
