package grid

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestPartitionKeyHashTags(t *testing.T) {
	cases := []struct{ key, want string }{
		{"plain", "plain"},
		{"user:{42}:cart", "42"},
		{"user:{42}:profile", "42"},
		{"{a}{b}", "a"},
		{"empty:{}:tag", "empty:{}:tag"},
		{"open:{never", "open:{never"},
		{"close}only{", "close}only{"},
	}
	for _, c := range cases {
		if got := string(PartitionKey([]byte(c.key))); got != c.want {
			t.Errorf("PartitionKey(%q) = %q, want %q", c.key, got, c.want)
		}
	}
}

func TestPartitionOfAffinityAndSpread(t *testing.T) {
	const p = 32
	if PartitionOf("m", []byte("user:{42}:cart"), p) != PartitionOf("m", []byte("user:{42}:profile"), p) {
		t.Fatal("keys sharing a hash tag landed in different partitions")
	}
	counts := make([]int, p)
	for i := 0; i < 32000; i++ {
		part := PartitionOf("m", []byte(fmt.Sprintf("key-%d", i)), p)
		if part < 0 || part >= p {
			t.Fatalf("partition %d out of range", part)
		}
		counts[part]++
	}
	for i, c := range counts {
		if c < 700 || c > 1300 { // expect ~1000 each
			t.Errorf("partition %d got %d of 32000 keys: hashing is badly skewed", i, c)
		}
	}
	// Stable across calls and processes: a fixed key maps to a fixed partition.
	if a, b := PartitionOf("m", []byte("x"), p), PartitionOf("m", []byte("x"), p); a != b {
		t.Fatal("PartitionOf is not deterministic")
	}
	if PartitionOf("m", []byte("k"), 0) != 0 {
		t.Fatal("zero partitions must map to 0, not panic")
	}
}

// TestBootstrapTableDeterministicDistinctBounded: the table a fresh cluster
// starts from (Desired over the founders, no current table) is the same
// whatever the order of the nodes, has distinct replicas, and bounds the
// primaries per node.
func TestBootstrapTableDeterministicDistinctBounded(t *testing.T) {
	var nodes []NodeRecord
	for i := 1; i <= 5; i++ {
		nodes = append(nodes, NodeRecord{Node: Node{ID: fmt.Sprintf("n%d", i), Addr: fmt.Sprintf("127.0.0.1:%d", 7100+i)}, State: StateActive})
	}
	policy := DefaultPolicy()
	policy.Partitions = 64
	p1, err := Desired(nodes, nil, policy)
	if err != nil {
		t.Fatal(err)
	}
	rev := append([]NodeRecord(nil), nodes...)
	for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
		rev[i], rev[j] = rev[j], rev[i]
	}
	p2, err := Desired(rev, nil, policy)
	if err != nil {
		t.Fatal(err)
	}
	t1, t2 := p1.Table, p2.Table
	if err := t1.Validate(); err != nil {
		t.Fatal(err)
	}
	if t1.Epoch != 1 {
		t.Errorf("bootstrap epoch %d, want 1", t1.Epoch)
	}
	primaries := map[string]int{}
	for i, p := range t1.Partitions {
		if strings.Join(p.Replicas, ",") != strings.Join(t2.Partitions[i].Replicas, ",") {
			t.Fatalf("partition %d placed differently for the same nodes", i)
		}
		if len(p.Replicas) != 3 {
			t.Fatalf("partition %d has %d replicas", i, len(p.Replicas))
		}
		primaries[p.Replicas[0]]++
	}
	// Bounded load: no node is primary for more than Load × average (+1 for rounding).
	limit := int(policy.Load*64/5) + 1
	for id, n := range primaries {
		if n > limit {
			t.Errorf("%s is primary for %d partitions, bound %d", id, n, limit)
		}
	}
	if len(t1.PartitionsOf("n1")) == 0 {
		t.Error("n1 holds no partition")
	}
	// Planning again over the same nodes moves nothing.
	again, err := Desired(nodes, t1, DefaultPolicy())
	if err != nil {
		t.Fatal(err)
	}
	if len(again.Moves) != 0 || again.Table.Epoch != t1.Epoch {
		t.Errorf("bootstrap table reshuffled: %v (epoch %d)", again.Moves, again.Table.Epoch)
	}
}

func TestBootstrapRejectsBadInput(t *testing.T) {
	nodes := []NodeRecord{{Node: Node{ID: "a", Addr: "x:1"}, State: StateActive}, {Node: Node{ID: "b", Addr: "x:2"}, State: StateActive}}
	if _, err := Desired(nodes, nil, Policy{Replicas: 3, Partitions: 8}); !errors.Is(err, ErrTooManyNodes) {
		t.Errorf("3 replicas on 2 nodes: %v", err)
	}
	if _, err := Desired(nodes, nil, Policy{Replicas: 1}); !errors.Is(err, ErrBadConfig) {
		t.Errorf("0 partitions: %v", err)
	}
	dup := &Table{Nodes: []Node{{ID: "a", Addr: "x:1"}, {ID: "a", Addr: "x:2"}}}
	if err := dup.Validate(); !errors.Is(err, ErrBadConfig) {
		t.Errorf("duplicate node ids validated: %v", err)
	}
}

func TestLimitsAndMapNames(t *testing.T) {
	l := DefaultLimits()
	if err := l.CheckKey(nil); !errors.Is(err, ErrEmptyKey) {
		t.Error(err)
	}
	if err := l.CheckKey(make([]byte, 4096)); err != nil {
		t.Error(err)
	}
	if err := l.CheckKey(make([]byte, 4097)); !errors.Is(err, ErrKeyTooLarge) {
		t.Error(err)
	}
	if err := l.CheckValue(make([]byte, 1<<20)); err != nil {
		t.Error(err)
	}
	if err := l.CheckValue(make([]byte, 1<<20+1)); !errors.Is(err, ErrValueTooLarge) {
		t.Error(err)
	}
	for _, ok := range []string{"users", "a", "log-2024.v1", "A_b"} {
		if err := ValidateMapName(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "has space", "slash/", strings.Repeat("x", 65), "ünï"} {
		if err := ValidateMapName(bad); !errors.Is(err, ErrInvalidMapName) {
			t.Errorf("%q accepted (%v)", bad, err)
		}
	}
	if err := (Limits{}).Validate(); err == nil || !strings.Contains(err.Error(), "key") || !strings.Contains(err.Error(), "value") {
		t.Errorf("zero limits: %v", err)
	}
}
