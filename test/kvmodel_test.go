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

// The register model checked by porcupine. Every written value is unique,
// so a version (which names one write) and the value it wrote identify each
// other: a CAS on version V is modelled as a CAS on the value written at V
// (absent, "", for version 0).

type opKind int

const (
	opGet opKind = iota
	opPut
	opCAS
)

type kvInput struct {
	kind     opKind
	key      string
	value    string // put/cas: the new value
	expected string // cas: the value at the expected version ("" = absent)
}

type kvOutput struct {
	value   string // get: "" = absent
	swapped bool   // cas
	unknown bool   // the outcome is ambiguous: it may or may not have happened
}

// kvModel is nondeterministic: an ambiguous write leads to two possible
// states (applied or not), and porcupine keeps both until a read decides.
func kvModel() porcupine.Model {
	m := &porcupine.NondeterministicModel{
		Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
			byKey := map[string][]porcupine.Operation{}
			var keys []string
			for _, op := range h {
				k := op.Input.(kvInput).key
				if _, ok := byKey[k]; !ok {
					keys = append(keys, k)
				}
				byKey[k] = append(byKey[k], op)
			}
			sort.Strings(keys)
			out := make([][]porcupine.Operation, 0, len(keys))
			for _, k := range keys {
				out = append(out, byKey[k])
			}
			return out
		},
		Init: func() []any { return []any{""} },
		Step: func(state, input, output any) []any {
			s, in, out := state.(string), input.(kvInput), output.(kvOutput)
			switch in.kind {
			case opGet:
				if out.unknown || out.value == s {
					return []any{s}
				}
				return nil
			case opPut:
				if out.unknown {
					return []any{s, in.value}
				}
				return []any{in.value}
			case opCAS:
				if out.unknown {
					if s == in.expected {
						return []any{s, in.value}
					}
					return []any{s}
				}
				if out.swapped {
					if s == in.expected {
						return []any{in.value}
					}
					return nil
				}
				if s != in.expected {
					return []any{s}
				}
				return nil
			}
			return nil
		},
		DescribeOperation: func(input, output any) string {
			in, out := input.(kvInput), output.(kvOutput)
			res := fmt.Sprintf("%q", out.value)
			if out.unknown {
				res = "?"
			}
			switch in.kind {
			case opGet:
				return fmt.Sprintf("get(%s) -> %s", in.key, res)
			case opPut:
				if out.unknown {
					return fmt.Sprintf("put(%s, %s) -> ?", in.key, in.value)
				}
				return fmt.Sprintf("put(%s, %s)", in.key, in.value)
			default:
				if out.unknown {
					return fmt.Sprintf("cas(%s, %q→%s) -> ?", in.key, in.expected, in.value)
				}
				return fmt.Sprintf("cas(%s, %q→%s) -> %v", in.key, in.expected, in.value, out.swapped)
			}
		},
		DescribeState: func(state any) string { return strings.TrimSpace(fmt.Sprintf("%q", state)) },
	}
	return m.ToModel()
}

// TestKVModelRejectsViolations proves the checker can fail: histories with a
// stale read, a lost acknowledged write and a double-applied CAS are refused,
// while an ambiguous write may be seen or not.
func TestKVModelRejectsViolations(t *testing.T) {
	op := func(c int, in kvInput, call int64, out kvOutput, ret int64) porcupine.Operation {
		return porcupine.Operation{ClientId: c, Input: in, Call: call, Output: out, Return: ret}
	}
	put := kvInput{kind: opPut, key: "k", value: "v1"}
	get := kvInput{kind: opGet, key: "k"}
	cases := []struct {
		name string
		ops  []porcupine.Operation
		want porcupine.CheckResult
	}{
		{"stale read after acknowledged put", []porcupine.Operation{
			op(0, put, 0, kvOutput{}, 10), op(1, get, 20, kvOutput{value: ""}, 30),
		}, porcupine.Illegal},
		{"read of a value never written", []porcupine.Operation{
			op(1, get, 0, kvOutput{value: "ghost"}, 10),
		}, porcupine.Illegal},
		{"two CAS from the same expectation both succeed", []porcupine.Operation{
			op(0, kvInput{kind: opCAS, key: "k", expected: "", value: "a"}, 0, kvOutput{swapped: true}, 10),
			op(1, kvInput{kind: opCAS, key: "k", expected: "", value: "b"}, 20, kvOutput{swapped: true}, 30),
		}, porcupine.Illegal},
		{"ambiguous put seen later", []porcupine.Operation{
			op(0, put, 0, kvOutput{unknown: true}, math.MaxInt64), op(1, get, 20, kvOutput{value: "v1"}, 30),
		}, porcupine.Ok},
		{"ambiguous put never seen", []porcupine.Operation{
			op(0, put, 0, kvOutput{unknown: true}, math.MaxInt64), op(1, get, 20, kvOutput{value: ""}, 30),
		}, porcupine.Ok},
		{"concurrent put and read of either value", []porcupine.Operation{
			op(0, put, 0, kvOutput{}, 30), op(1, get, 10, kvOutput{value: ""}, 20),
		}, porcupine.Ok},
	}
	for _, tc := range cases {
		res, _ := porcupine.CheckOperationsVerbose(kvModel(), tc.ops, 10*time.Second)
		if res != tc.want {
			t.Errorf("%s: porcupine says %s, want %s", tc.name, res, tc.want)
		}
	}
}
