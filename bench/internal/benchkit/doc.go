// Package benchkit is what the connect benchmarks under bench/ share: the
// C programs they time (built into a temporary directory, never the
// tree), listeners that record where each connection or datagram came
// from, running a program inside a login session, and order statistics.
package benchkit
