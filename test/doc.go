// Package test holds zerogrid's tests over real processes: the zerogrid
// binary is built once, clusters run as `zerogrid node` processes on
// loopback ports, and nodes are killed with SIGKILL while clients run.
// Benchmark drivers live in test/bench.
package test
