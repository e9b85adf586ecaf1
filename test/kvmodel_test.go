package test

import (
	"fmt"
	"math"
	"sort"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// The register model checked by porcupine. Every written value is unique,
// so a version (which names one write) and the value it wrote identify each
// other: a CAS on version V is modelled as a CAS on the value written at V
// (absent, "", for version 0).
//
// A put may carry a TTL. The leader stamps the write's time between the
// put's call and return, so its expiry falls in [call+ttl, return+ttl]
// (history time, with ttlSlack either side for the clocks): a read whose
// call is after that window must not see the value, and one that returns
// before it must not miss it. Expiry is decided once, in the log: a key
// seen expired stays gone until written again.

type opKind int

const (
	opGet opKind = iota
	opPut
	opCAS
	opDelete
)

// ttlSlack widens every expiry window: the nodes stamp expiry with the wall
// clock, the history with the monotonic one.
const ttlSlack = int64(2 * time.Millisecond)

type kvInput struct {
	kind     opKind
	key      string
	value    string // put/cas: the new value
	expected string // cas: the value at the expected version ("" = absent)
	ttl      int64  // put: time to live in ns (0: none)
	call     int64  // when the operation was called (history time)
}

type kvOutput struct {
	value   string // get: "" = absent
	swapped bool   // cas
	unknown bool   // the outcome is ambiguous: it may or may not have happened
	ret     int64  // when the operation returned (history time)
}

// kvState is one key: its value and, for a value written with a TTL, the
// window its expiry falls in (expLo = 0: no expiry).
type kvState struct {
	value        string
	expLo, expHi int64
}

// mayBeExpired: the value may have expired by time t.
func (s kvState) mayBeExpired(t int64) bool { return s.value != "" && s.expLo > 0 && t >= s.expLo }

// mustBeExpired: the value has expired by time t.
func (s kvState) mustBeExpired(t int64) bool { return s.value != "" && s.expLo > 0 && t > s.expHi }

// absentAt: the key may read as absent at some point before ret: it is
// absent, or its value may have expired by then.
func (s kvState) absentAt(ret int64) bool { return s.value == "" || s.mayBeExpired(ret) }

// liveAs: the key may read as value v at some point of [call, ...].
func (s kvState) liveAs(v string, call int64) bool {
	return s.value == v && v != "" && !s.mustBeExpired(call)
}

// kvModel is nondeterministic: an ambiguous write leads to two possible
// states (applied or not), and porcupine keeps both until a read decides.
func kvModel() porcupine.Model {
	written := func(in kvInput, out kvOutput) kvState {
		st := kvState{value: in.value}
		if in.ttl > 0 {
			hi := int64(math.MaxInt64)
			if !out.unknown {
				hi = out.ret + in.ttl + ttlSlack
			}
			st.expLo, st.expHi = in.call+in.ttl-ttlSlack, hi
		}
		return st
	}
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
		Init: func() []any { return []any{kvState{}} },
		Step: func(state, input, output any) []any {
			s, in, out := state.(kvState), input.(kvInput), output.(kvOutput)
			gone := kvState{}
			switch in.kind {
			case opGet:
				switch {
				case out.unknown:
					return []any{s}
				case out.value == "" && s.value == "":
					return []any{s}
				case out.value == "" && s.mayBeExpired(out.ret):
					return []any{gone} // expired, for good
				case out.value != "" && s.liveAs(out.value, in.call):
					return []any{s}
				}
				return nil
			case opPut:
				if out.unknown {
					return []any{s, written(in, out)}
				}
				return []any{written(in, out)}
			case opDelete:
				if out.unknown {
					return []any{s, gone}
				}
				return []any{gone}
			case opCAS:
				ret := out.ret
				if out.unknown {
					ret = math.MaxInt64
				}
				// Whether the key held the expected value at the swap.
				matches := s.liveAs(in.expected, in.call)
				if in.expected == "" {
					matches = s.absentAt(ret)
				}
				differs := s.value != in.expected && !(in.expected == "" && s.mustBeExpired(in.call))
				var next []any
				if (out.unknown || out.swapped) && matches {
					next = append(next, kvState{value: in.value}) // a swap writes no TTL
				}
				if out.unknown || !out.swapped {
					if differs || out.unknown {
						next = append(next, s)
					}
					if in.expected != "" && s.value == in.expected && s.mayBeExpired(ret) {
						next = append(next, gone) // it expired before the swap
					}
				}
				return next
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
			case opDelete:
				if out.unknown {
					return fmt.Sprintf("delete(%s) -> ?", in.key)
				}
				return fmt.Sprintf("delete(%s)", in.key)
			case opPut:
				ttl := ""
				if in.ttl > 0 {
					ttl = fmt.Sprintf(" ttl %v", time.Duration(in.ttl))
				}
				if out.unknown {
					return fmt.Sprintf("put(%s, %s%s) -> ?", in.key, in.value, ttl)
				}
				return fmt.Sprintf("put(%s, %s%s)", in.key, in.value, ttl)
			default:
				if out.unknown {
					return fmt.Sprintf("cas(%s, %q→%s) -> ?", in.key, in.expected, in.value)
				}
				return fmt.Sprintf("cas(%s, %q→%s) -> %v", in.key, in.expected, in.value, out.swapped)
			}
		},
		DescribeState: func(state any) string {
			s := state.(kvState)
			if s.expLo > 0 {
				return fmt.Sprintf("%q (expires in [%v, %v])", s.value, time.Duration(s.expLo), time.Duration(s.expHi))
			}
			return fmt.Sprintf("%q", s.value)
		},
	}
	return m.ToModel()
}

// TestKVModelRejectsViolations proves the checker can fail: histories with a
// stale read, a lost acknowledged write and a double-applied CAS are refused,
// while an ambiguous write may be seen or not.
func TestKVModelRejectsViolations(t *testing.T) {
	op := func(c int, in kvInput, call int64, out kvOutput, ret int64) porcupine.Operation {
		in.call, out.ret = call, ret
		return porcupine.Operation{ClientId: c, Input: in, Call: call, Output: out, Return: ret}
	}
	put := kvInput{kind: opPut, key: "k", value: "v1"}
	ms := func(n int64) int64 { return n * int64(time.Millisecond) }
	ttlPut := kvInput{kind: opPut, key: "k", value: "v1", ttl: ms(100)}
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
		{"read of a deleted key", []porcupine.Operation{
			op(0, put, 0, kvOutput{}, 10), op(1, kvInput{kind: opDelete, key: "k"}, 20, kvOutput{}, 30),
			op(2, get, 40, kvOutput{value: "v1"}, 50),
		}, porcupine.Illegal},
		{"TTL key read as expired before its TTL could pass", []porcupine.Operation{
			op(0, ttlPut, 0, kvOutput{}, ms(10)), op(1, get, ms(20), kvOutput{value: ""}, ms(30)),
		}, porcupine.Illegal},
		{"TTL key read as live after its TTL surely passed", []porcupine.Operation{
			op(0, ttlPut, 0, kvOutput{}, ms(10)), op(1, get, ms(200), kvOutput{value: "v1"}, ms(210)),
		}, porcupine.Illegal},
		{"TTL key read as expired inside its expiry window", []porcupine.Operation{
			op(0, ttlPut, 0, kvOutput{}, ms(10)), op(1, get, ms(105), kvOutput{value: ""}, ms(106)),
		}, porcupine.Ok},
		{"TTL key read as live inside its expiry window", []porcupine.Operation{
			op(0, ttlPut, 0, kvOutput{}, ms(10)), op(1, get, ms(105), kvOutput{value: "v1"}, ms(106)),
		}, porcupine.Ok},
		{"TTL key seen expired, then swapped as live", []porcupine.Operation{
			op(0, ttlPut, 0, kvOutput{}, ms(10)), op(1, get, ms(105), kvOutput{value: ""}, ms(106)),
			op(2, kvInput{kind: opCAS, key: "k", expected: "v1", value: "x"}, ms(107), kvOutput{swapped: true}, ms(108)),
		}, porcupine.Illegal},
		{"TTL key seen expired, then created by a swap from absent", []porcupine.Operation{
			op(0, ttlPut, 0, kvOutput{}, ms(10)), op(1, get, ms(105), kvOutput{value: ""}, ms(106)),
			op(2, kvInput{kind: opCAS, key: "k", expected: "", value: "x"}, ms(107), kvOutput{swapped: true}, ms(108)),
		}, porcupine.Ok},
		{"swap from absent refused long after the TTL passed", []porcupine.Operation{
			op(0, ttlPut, 0, kvOutput{}, ms(10)),
			op(2, kvInput{kind: opCAS, key: "k", expected: "", value: "x"}, ms(300), kvOutput{swapped: false}, ms(301)),
		}, porcupine.Illegal},
	}
	for _, tc := range cases {
		res, _ := porcupine.CheckOperationsVerbose(kvModel(), tc.ops, 10*time.Second)
		if res != tc.want {
			t.Errorf("%s: porcupine says %s, want %s", tc.name, res, tc.want)
		}
	}
}
