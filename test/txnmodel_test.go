package test

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// The model of one hash-tag group of keys, checked by porcupine: gets of one
// key, and conditional writes — a transaction (compares, then the Then or
// the Else writes) or a compare-and-swap, which is a transaction with one
// version compare and one write. Every written value is unique, so a version
// (which names one write of a key) and the value it wrote identify each
// other: a compare on version V is a compare on the value written at V
// ("" for version 0, the key absent).

// txnGroupKeys is how many keys a group has; a state holds their values.
const txnGroupKeys = 3

// txnState is the value of each key of a group, "" when absent. It is an
// array so that porcupine can compare states with ==.
type txnState [txnGroupKeys]string

type txnOpKind int

const (
	txnGet txnOpKind = iota
	txnCAS
	txnTxn
)

type txnCmpTarget int

const (
	cmpVersion txnCmpTarget = iota // the value written at the expected version ("" = absent)
	cmpValue                       // exists with this value
	cmpExists
	cmpMissing
)

type txnCmp struct {
	key    int
	target txnCmpTarget
	value  string
}

type txnWrite struct {
	key   int
	value string
	del   bool
}

type txnInput struct {
	group     string
	kind      txnOpKind
	key       int // get
	cmps      []txnCmp
	then, els []txnWrite
}

type txnOutput struct {
	value   string // get: "" = absent
	ok      bool   // cas: swapped; txn: the compares held (Then applied)
	unknown bool   // a write's outcome is ambiguous: it may or may not have happened
}

func (c txnCmp) holds(s txnState) bool {
	cur := s[c.key]
	switch c.target {
	case cmpVersion:
		return cur == c.value
	case cmpValue:
		return cur != "" && cur == c.value
	case cmpExists:
		return cur != ""
	default:
		return cur == ""
	}
}

// stepTxn applies one operation; it returns the possible next states, none
// if the output is impossible from s.
func stepTxn(s txnState, in txnInput, out txnOutput) []txnState {
	if in.kind == txnGet {
		if s[in.key] == out.value {
			return []txnState{s}
		}
		return nil
	}
	ok := true
	for _, c := range in.cmps {
		ok = ok && c.holds(s)
	}
	writes := in.then
	if !ok {
		writes = in.els
	}
	next := s
	for _, w := range writes {
		if w.del {
			next[w.key] = ""
		} else {
			next[w.key] = w.value
		}
	}
	switch {
	case out.unknown && next != s:
		return []txnState{s, next}
	case out.unknown:
		return []txnState{s}
	case out.ok != ok:
		return nil
	}
	return []txnState{next}
}

func txnModel() porcupine.Model {
	m := &porcupine.NondeterministicModel{
		Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
			byGroup := map[string][]porcupine.Operation{}
			for _, op := range h {
				g := op.Input.(txnInput).group
				byGroup[g] = append(byGroup[g], op)
			}
			groups := make([]string, 0, len(byGroup))
			for g := range byGroup {
				groups = append(groups, g)
			}
			sort.Strings(groups)
			out := make([][]porcupine.Operation, 0, len(groups))
			for _, g := range groups {
				out = append(out, byGroup[g])
			}
			return out
		},
		Init: func() []any { return []any{txnState{}} },
		Step: func(state, input, output any) []any {
			var out []any
			for _, s := range stepTxn(state.(txnState), input.(txnInput), output.(txnOutput)) {
				out = append(out, s)
			}
			return out
		},
		DescribeOperation: describeTxnOp,
		DescribeState:     func(state any) string { return fmt.Sprintf("%q", state) },
	}
	return m.ToModel()
}

func describeTxnOp(input, output any) string {
	in, out := input.(txnInput), output.(txnOutput)
	res := fmt.Sprint(out.ok)
	if out.unknown {
		res = "?"
	}
	writes := func(ws []txnWrite) string {
		var parts []string
		for _, w := range ws {
			if w.del {
				parts = append(parts, fmt.Sprintf("del %d", w.key))
			} else {
				parts = append(parts, fmt.Sprintf("%d=%s", w.key, w.value))
			}
		}
		return strings.Join(parts, ", ")
	}
	switch in.kind {
	case txnGet:
		return fmt.Sprintf("%s get(%d) -> %q", in.group, in.key, out.value)
	case txnCAS:
		return fmt.Sprintf("%s cas(%d: %q -> %s) -> %s", in.group, in.cmps[0].key, in.cmps[0].value, writes(in.then), res)
	}
	var cmps []string
	for _, c := range in.cmps {
		cmps = append(cmps, fmt.Sprintf("%d %s %q", c.key, [...]string{"version-of", "value", "exists", "missing"}[c.target], c.value))
	}
	return fmt.Sprintf("%s txn(if %s then %s else %s) -> %s", in.group, strings.Join(cmps, " && "), writes(in.then), writes(in.els), res)
}

// TestTxnModelRejectsViolations proves the checker can fail: histories in
// which a transaction observes a value never written, a transaction is
// half applied, a branch is lost or reported wrongly, or two swaps succeed
// from one version are refused; ambiguous writes may be seen or not.
func TestTxnModelRejectsViolations(t *testing.T) {
	op := func(c int, in txnInput, call int64, out txnOutput, ret int64) porcupine.Operation {
		if out.unknown {
			ret = math.MaxInt64
		}
		return porcupine.Operation{ClientId: c, Input: in, Call: call, Output: out, Return: ret}
	}
	get := func(k int) txnInput { return txnInput{group: "g", kind: txnGet, key: k} }
	txn := func(cmps []txnCmp, then, els []txnWrite) txnInput {
		return txnInput{group: "g", kind: txnTxn, cmps: cmps, then: then, els: els}
	}
	cas := func(k int, expected, value string) txnInput {
		return txnInput{group: "g", kind: txnCAS, cmps: []txnCmp{{k, cmpVersion, expected}}, then: []txnWrite{{key: k, value: value}}}
	}
	putAB := txn(nil, []txnWrite{{key: 0, value: "a1"}, {key: 1, value: "b1"}}, nil)
	ifA := func(v string) txnInput {
		return txn([]txnCmp{{0, cmpValue, v}}, []txnWrite{{key: 2, value: "then"}}, []txnWrite{{key: 2, value: "else"}})
	}
	cases := []struct {
		name string
		ops  []porcupine.Operation
		want porcupine.CheckResult
	}{
		{"txn observes a value never written", []porcupine.Operation{
			op(0, ifA("ghost"), 0, txnOutput{ok: true}, 10),
		}, porcupine.Illegal},
		{"get of a value never written", []porcupine.Operation{
			op(0, get(0), 0, txnOutput{value: "ghost"}, 10),
		}, porcupine.Illegal},
		{"txn half applied", []porcupine.Operation{
			op(0, putAB, 0, txnOutput{ok: true}, 10),
			op(1, get(0), 20, txnOutput{value: "a1"}, 30),
			op(1, get(1), 40, txnOutput{value: ""}, 50),
		}, porcupine.Illegal},
		{"txn reports Then though its compare fails", []porcupine.Operation{
			op(0, ifA("a1"), 0, txnOutput{ok: true}, 10),
		}, porcupine.Illegal},
		{"else branch lost", []porcupine.Operation{
			op(0, ifA("a1"), 0, txnOutput{ok: false}, 10),
			op(1, get(2), 20, txnOutput{value: ""}, 30),
		}, porcupine.Illegal},
		{"else branch applied", []porcupine.Operation{
			op(0, ifA("a1"), 0, txnOutput{ok: false}, 10),
			op(1, get(2), 20, txnOutput{value: "else"}, 30),
		}, porcupine.Ok},
		{"then branch after the write it compares", []porcupine.Operation{
			op(0, putAB, 0, txnOutput{ok: true}, 10),
			op(1, ifA("a1"), 20, txnOutput{ok: true}, 30),
			op(1, get(2), 40, txnOutput{value: "then"}, 50),
		}, porcupine.Ok},
		{"two swaps from one version", []porcupine.Operation{
			op(0, cas(0, "", "x"), 0, txnOutput{ok: true}, 10),
			op(1, cas(0, "", "y"), 20, txnOutput{ok: true}, 30),
		}, porcupine.Illegal},
		{"missing and exists both hold", []porcupine.Operation{
			op(0, putAB, 0, txnOutput{ok: true}, 10),
			op(1, txn([]txnCmp{{1, cmpMissing, ""}}, []txnWrite{{key: 1, del: true}}, nil), 20, txnOutput{ok: true}, 30),
		}, porcupine.Illegal},
		{"ambiguous txn seen later", []porcupine.Operation{
			op(0, putAB, 0, txnOutput{unknown: true}, 0),
			op(1, get(1), 20, txnOutput{value: "b1"}, 30),
			op(1, get(0), 40, txnOutput{value: "a1"}, 50),
		}, porcupine.Ok},
		{"ambiguous txn never seen", []porcupine.Operation{
			op(0, putAB, 0, txnOutput{unknown: true}, 0),
			op(1, get(0), 20, txnOutput{value: ""}, 30),
		}, porcupine.Ok},
		{"ambiguous txn seen half", []porcupine.Operation{
			op(0, putAB, 0, txnOutput{unknown: true}, 0),
			op(1, get(0), 20, txnOutput{value: "a1"}, 30),
			op(1, get(1), 40, txnOutput{value: ""}, 50),
		}, porcupine.Illegal},
	}
	for _, tc := range cases {
		res, _ := porcupine.CheckOperationsVerbose(txnModel(), tc.ops, 10*time.Second)
		if res != tc.want {
			t.Errorf("%s: porcupine says %s, want %s", tc.name, res, tc.want)
		}
	}
}
