package metricslib

import (
	"bytes"
	"fmt"
	"testing"

	vm "github.com/VictoriaMetrics/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
)

// Issue 13 asks whether VictoriaMetrics/metrics is measurably lighter on
// ARMv6 than prometheus/client_golang, which the node uses. These
// benchmarks do what a node does with each — count an RPC, observe its
// latency, and render a scrape of about the size of a node's (33 groups ×
// 6 gauges, 40 RPC methods × a counter and a 14-bucket histogram) — and run
// the same on amd64 and, cross-compiled, as ARMv6 code under qemu
// (BENCHMARKS.md has the command and the figures).

const (
	scrapeGroups  = 33
	scrapeMethods = 40
)

var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

func BenchmarkMetricsCounterProm(b *testing.B) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rpcs_total"}, []string{"method", "code"})
	for b.Loop() {
		c.WithLabelValues("Put", "OK").Inc()
	}
}

func BenchmarkMetricsCounterVM(b *testing.B) {
	s := vm.NewSet()
	for b.Loop() {
		s.GetOrCreateCounter(`rpcs_total{method="Put",code="OK"}`).Inc()
	}
}

func BenchmarkMetricsHistogramProm(b *testing.B) {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "rpc_seconds", Buckets: latencyBuckets}, []string{"method"})
	for b.Loop() {
		h.WithLabelValues("Put").Observe(0.0042)
	}
}

func BenchmarkMetricsHistogramVM(b *testing.B) {
	s := vm.NewSet()
	for b.Loop() {
		s.GetOrCreateHistogram(`rpc_seconds{method="Put"}`).Update(0.0042)
	}
}

func BenchmarkMetricsScrapeProm(b *testing.B) {
	reg := prometheus.NewRegistry()
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "raft_index"}, []string{"partition", "kind"})
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rpcs_total"}, []string{"method", "code"})
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "rpc_seconds", Buckets: latencyBuckets}, []string{"method"})
	reg.MustRegister(g, c, h)
	for p := range scrapeGroups {
		for k := range 6 {
			g.WithLabelValues(fmt.Sprint(p), fmt.Sprint(k)).Set(float64(p * k))
		}
	}
	for m := range scrapeMethods {
		c.WithLabelValues(fmt.Sprint("M", m), "OK").Add(float64(m))
		h.WithLabelValues(fmt.Sprint("M", m)).Observe(0.001 * float64(m))
	}
	var buf bytes.Buffer
	for b.Loop() {
		buf.Reset()
		fams, err := reg.Gather()
		if err != nil {
			b.Fatal(err)
		}
		enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeTextPlain))
		for _, f := range fams {
			if err := enc.Encode(f); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(buf.Len()), "bytes/scrape")
}

func BenchmarkMetricsScrapeVM(b *testing.B) {
	s := vm.NewSet()
	for p := range scrapeGroups {
		for k := range 6 {
			v := float64(p * k)
			s.GetOrCreateGauge(fmt.Sprintf(`raft_index{partition="%d",kind="%d"}`, p, k), func() float64 { return v })
		}
	}
	for m := range scrapeMethods {
		s.GetOrCreateCounter(fmt.Sprintf(`rpcs_total{method="M%d",code="OK"}`, m)).Add(m)
		s.GetOrCreateHistogram(fmt.Sprintf(`rpc_seconds{method="M%d"}`, m)).Update(0.001 * float64(m))
	}
	var buf bytes.Buffer
	for b.Loop() {
		buf.Reset()
		s.WritePrometheus(&buf)
	}
	b.ReportMetric(float64(buf.Len()), "bytes/scrape")
}
