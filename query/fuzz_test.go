package query

import (
	"encoding/json"
	"testing"
	"time"
)

// Fuzz targets for what users hand the grid as data or code: the JSON
// value decoder (every stored value a job reads) and Starlark sources
// (filters, aggregates and scripts). `go test -fuzz FuzzX ./query`
// explores; the seeds run with every `go test`.

func FuzzParseJSON(f *testing.F) {
	for _, s := range []string{`{"a":1,"b":[true,null,"x\u00e9"]}`, `-1.5e3`, `"\ud83d\ude00"`, `[[[[]]]]`, `{"a":`, `01`, `1e400`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		v, ok := parseJSON(b)
		skip := jsonDecoder{b: b, skip: true}
		skip.skipWS()
		_, sok := skip.value(0)
		skip.skipWS()
		if sok = sok && skip.i == len(b); sok != ok {
			t.Fatalf("%q: decoding says %v, checking says %v", b, ok, sok)
		}
		if ok && !json.Valid(b) {
			t.Fatalf("%q accepted as JSON (%v) but is not", b, v)
		}
	})
}

func FuzzCompileFilter(f *testing.F) {
	for _, s := range []string{`v.region == "eu"`, `int(k[1:]) % 2 == 0`, `[x for x in range(1000000000)]`, `v[`, `args.n > 3 and v.n or 0`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		job := Job{Map: "m", Agg: "count", Filter: src, Limits: Limits{Steps: 10000, Deadline: time.Second}}
		_, _ = Compile(job, nil) // an error or a program; never a panic or a hang
	})
}

func FuzzCompileScript(f *testing.F) {
	for _, s := range []string{
		"def map(k, v):\n    emit(k, 1)\n",
		"def map(k, v):\n    emit(v.region, v.amount)\ndef reduce(k, vs):\n    return sum(vs)\n",
		"x = 1\nwhile True:\n    x += 1\n",
		"load('os', 'x')\n",
		"def map(k, v): emit(k, 1 << 70)\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		job := Job{Map: "m", Script: src, Limits: Limits{Steps: 10000, Deadline: time.Second}}
		_, _ = Compile(job, nil)
	})
}
