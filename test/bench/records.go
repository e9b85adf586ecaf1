package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"

	"github.com/zerogrid/zerogrid/client"
)

// The compute benchmark's records are sales: {"region":"eu","shop":"s17",
// "amount":123,"pad":"..."}, padded to a fixed size, and the aggregate both
// sides compute is the EU sales per shop.
const (
	aggFilter = `v.region == "eu"`
	aggExpr   = `sum(v.amount) by v.shop`
)

var regions = [...]string{"eu", "us", "apac", "latam"}

// recordGen makes the benchmark's records: record i is a function of (seed,
// i) alone, so a run can be repeated and any record made again.
type recordGen struct {
	seed  uint64
	size  int // bytes per value
	shops int
}

// minRecordBytes fits the largest record without padding.
const minRecordBytes = 80

func (g recordGen) key(i uint64) []byte { return []byte(fmt.Sprintf("sale:%010d", i)) }

// record returns record i's fields and its JSON value of exactly g.size
// bytes.
func (g recordGen) record(i uint64) (region, shop string, amount int64, value []byte) {
	r := rand.New(rand.NewPCG(g.seed, i))
	region = regions[r.IntN(len(regions))]
	shop = "s" + strconv.Itoa(r.IntN(g.shops))
	amount = 1 + r.Int64N(100_000)
	head := `{"region":"` + region + `","shop":"` + shop + `","amount":` + strconv.FormatInt(amount, 10) + `,"pad":"`
	pad := max(0, g.size-len(head)-2)
	value = make([]byte, 0, len(head)+pad+2)
	value = append(value, head...)
	for j := range pad {
		value = append(value, 'a'+byte(j%26))
	}
	return region, shop, amount, append(value, '"', '}')
}

// aggregate is the EU sales per shop, computed at the client.
type aggregate struct {
	sums    map[string]int64 // shop → sum of amounts of EU records
	records uint64           // records seen, EU or not
}

func newAggregate() *aggregate { return &aggregate{sums: map[string]int64{}} }

// addFields counts one record whose fields are known.
func (a *aggregate) addFields(region, shop string, amount int64) {
	a.records++
	if region == "eu" {
		a.sums[shop] += amount
	}
}

// sale is a record as the client decodes it.
type sale struct {
	Region string `json:"region"`
	Shop   string `json:"shop"`
	Amount int64  `json:"amount"`
}

// addJSON decodes one stored value and counts it: the work a client does
// per record when it pulls the data to itself.
func (a *aggregate) addJSON(value []byte) error {
	var s sale
	if err := json.Unmarshal(value, &s); err != nil {
		return fmt.Errorf("decode %.40q: %w", value, err)
	}
	a.addFields(s.Region, s.Shop, s.Amount)
	return nil
}

// groupsToSums turns a job's result into shop → sum; every value must be an
// exact integer.
func groupsToSums(groups []client.JobGroup) (map[string]int64, error) {
	out := make(map[string]int64, len(groups))
	for _, g := range groups {
		v, ok := g.Value.(int64)
		if !ok {
			return nil, fmt.Errorf("group %q: value %v is a %T, not an int64", g.Key, g.Value, g.Value)
		}
		if _, dup := out[g.Key]; dup {
			return nil, fmt.Errorf("group %q appears twice", g.Key)
		}
		out[g.Key] = v
	}
	return out, nil
}

// diffSums lists every difference between two shop → sum maps (empty if
// they are equal), naming the sides a and b.
func diffSums(aName string, a map[string]int64, bName string, b map[string]int64) []string {
	var diffs []string
	keys := slices.Sorted(maps.Keys(a))
	for _, k := range keys {
		bv, ok := b[k]
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("shop %q: %s %d, missing from %s", k, aName, a[k], bName))
		case bv != a[k]:
			diffs = append(diffs, fmt.Sprintf("shop %q: %s %d, %s %d", k, aName, a[k], bName, bv))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(b)) {
		if _, ok := a[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("shop %q: %s %d, missing from %s", k, bName, b[k], aName))
		}
	}
	return diffs
}

// errMismatch formats differing results, the first few of them.
func errMismatch(what string, diffs []string) error {
	const show = 10
	n, more := len(diffs), ""
	if len(diffs) > show {
		more = fmt.Sprintf("\n  ... and %d more", len(diffs)-show)
		diffs = diffs[:show]
	}
	return fmt.Errorf("RESULTS DIFFER: %s: %d difference(s):\n  %s%s", what, n, strings.Join(diffs, "\n  "), more)
}
