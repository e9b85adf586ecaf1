// Package metricslib holds only benchmarks: prometheus/client_golang (which
// the node uses) against VictoriaMetrics/metrics, doing what a node does
// with each, on amd64 and as ARMv6 code under qemu (see BENCHMARKS.md).
package metricslib
