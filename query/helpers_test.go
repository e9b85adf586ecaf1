package query

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"
)

type kv struct {
	key   string
	value []byte
}

// record is the Go view of a generated value, for the reference results.
type record struct {
	key    string
	Region string  `json:"region"`
	Shop   string  `json:"shop"`
	Amount *int64  `json:"amount,omitempty"`
	Price  float64 `json:"price"`
	Name   string  `json:"name"`
	Text   string  `json:"text"`
}

var (
	regions = []string{"eu", "us", "asia", "africa", "oceania"}
	words   = strings.Fields("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau upsilon")
)

// genData makes n records: JSON values, some without amount, amounts up to
// 2^40 (so sums stay within int64), prices with fractions.
func genData(n int, seed uint64) ([]kv, []record) {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	kvs := make([]kv, 0, n)
	recs := make([]record, 0, n)
	for i := range n {
		r := record{
			key:    fmt.Sprintf("k%06d", i),
			Region: regions[rng.IntN(len(regions))],
			Shop:   fmt.Sprintf("shop%d", rng.IntN(40)),
			Price:  float64(rng.IntN(1_000_000)) / 100,
			Name:   words[rng.IntN(len(words))] + fmt.Sprint(rng.IntN(100)),
		}
		if rng.IntN(10) != 0 {
			a := rng.Int64N(1<<40) - 1<<38
			r.Amount = &a
		}
		if rng.IntN(7) == 0 {
			r.Price = -r.Price * 1e-3
		}
		var text []string
		for range 1 + rng.IntN(6) {
			text = append(text, words[rng.IntN(len(words))])
		}
		r.Text = strings.Join(text, " ")
		b, err := json.Marshal(r)
		if err != nil {
			panic(err)
		}
		kvs = append(kvs, kv{r.key, b})
		recs = append(recs, r)
	}
	return kvs, recs
}

// split cuts sorted data into parts partitions of uneven sizes (some empty).
func split(kvs []kv, parts int, rng *rand.Rand) [][]kv {
	cuts := []int{0, len(kvs)}
	for range parts - 1 {
		cuts = append(cuts, rng.IntN(len(kvs)+1))
	}
	sort.Ints(cuts)
	out := make([][]kv, 0, parts)
	for i := 0; i+1 < len(cuts); i++ {
		out = append(out, kvs[cuts[i]:cuts[i+1]])
	}
	return out
}

func scanOf(part []kv) func(fn func(key, value []byte) error) error {
	return func(fn func(key, value []byte) error) error {
		for _, e := range part {
			if err := fn([]byte(e.key), e.value); err != nil {
				return err
			}
		}
		return nil
	}
}

// runParts runs one task per partition, ships each partial through the
// wire encoding, merges them in random order and finalizes.
func runParts(t testing.TB, prog *Program, parts [][]kv, rng *rand.Rand) (*Result, error) {
	t.Helper()
	var partials []*Partial
	for _, part := range parts {
		p, _, err := prog.RunTask(context.Background(), scanOf(part))
		if err != nil {
			return nil, err
		}
		b, err := p.MarshalBinary()
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		q, err := UnmarshalPartial(b)
		if err != nil {
			t.Fatalf("unmarshal our own partial: %v", err)
		}
		partials = append(partials, q)
	}
	if rng != nil {
		rng.Shuffle(len(partials), func(i, j int) { partials[i], partials[j] = partials[j], partials[i] })
	}
	var merged *Partial
	for _, p := range partials {
		if merged == nil {
			merged = p
			continue
		}
		if err := prog.Merge(merged, p); err != nil {
			return nil, err
		}
	}
	return prog.Finalize(context.Background(), merged)
}

func runJob(t testing.TB, job Job, reg *Registry, parts [][]kv, rng *rand.Rand) (*Result, error) {
	t.Helper()
	if job.Map == "" {
		job.Map = "sales"
	}
	prog, err := Compile(job, reg)
	if err != nil {
		return nil, err
	}
	return runParts(t, prog, parts, rng)
}

// resultMap flattens a result for comparison.
func resultMap(r *Result) map[string]any {
	m := map[string]any{}
	for _, g := range r.Groups {
		m[g.Key] = g.Value
	}
	return m
}

func mustJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
