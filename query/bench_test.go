package query

import "testing"

// Per-record cost of a task; run with
//
//	go test -run XXX -bench . -benchmem ./query/
func BenchmarkRunTask(b *testing.B) {
	kvs, _ := genData(10_000, 12)
	for _, c := range []struct {
		name string
		job  Job
	}{
		{"count", Job{Agg: "count"}},
		{"count-filter", Job{Agg: "count", Filter: `v.region == "eu"`}},
		{"count-key-filter", Job{Agg: "count", Filter: `k.endswith("7")`}},
		{"sum-by", Job{Agg: "sum(v.price) by v.region"}},
		{"topk", Job{Agg: "topk(10, v.price)"}},
		{"wordcount", Job{Script: wordCount}},
	} {
		b.Run(c.name, func(b *testing.B) {
			prog := mustCompile(b, c.job)
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := prog.RunTask(b.Context(), scanOf(kvs)); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(kvs)), "ns/record")
		})
	}
}
