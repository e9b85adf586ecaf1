package query

import (
	"encoding/json"
	"strings"
	"testing"

	"go.starlark.net/starlark"
)

func TestDecodeStored(t *testing.T) {
	cases := map[string]string{ // stored bytes → Starlark repr
		`{"a": 1, "b": [true, null, 1.5, -0, 12345678901234567890123]}`: `{"a": 1, "b": [True, None, 1.5, 0, 12345678901234567890123]}`,
		`"caf\u00e9 \ud83d\ude00 \ud800 \n\"\\\/"`:                      `"café 😀 � \n\"\\/"`,
		`  [ ]  `:                      `[]`,
		`1e2`:                          `100.0`,
		`{"a":1}x`:                     `"{\"a\":1}x"`,
		`01`:                           `"01"`,
		`1e999`:                        `"1e999"`,
		`[1,]`:                         `"[1,]"`,
		`"\x"`:                         `"\"\\x\""`,
		"\"a\tb\"":                     `"\"a\tb\""`, // raw control character: not JSON
		`{"a" 1}`:                      `"{\"a\" 1}"`,
		"":                             `""`,
		`tru`:                          `"tru"`,
		`{"k": {"k": "deep"}, "k": 2}`: `{"k": 2}`,
	}
	for in, want := range cases {
		if got := decodeStored([]byte(in)).String(); got != want {
			t.Errorf("%q: got %s, want %s", in, got, want)
		}
	}
	deep := strings.Repeat("[", maxJSONDepth+2) + strings.Repeat("]", maxJSONDepth+2)
	if _, ok := decodeStored([]byte(deep)).(starlark.String); !ok {
		t.Errorf("nesting beyond %d levels decoded", maxJSONDepth)
	}
}

// The checking (skip) mode and the decoding mode accept the same inputs;
// lazy objects rely on it.
func FuzzJSONModes(f *testing.F) {
	for _, s := range []string{`{"a": 1}`, `[1, "x", {"y": null}]`, `"\ud83d\ude00"`, `-1.5e-3`, `{"a":1,}`, `1e400`, `123456789012345678901234567890`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		check := jsonDecoder{b: b, skip: true}
		check.skipWS()
		_, ok1 := check.value(0)
		check.skipWS()
		ok1 = ok1 && check.i == len(b)
		v, ok2 := parseJSON(b)
		if ok1 != ok2 {
			t.Fatalf("%q: check says %v, decode says %v", b, ok1, ok2)
		}
		if ok2 && json.Valid(b) != ok2 {
			t.Fatalf("%q: we accept what encoding/json rejects", b)
		}
		if lo, isLazy := decodeStored(b).(*lazyObject); isLazy {
			if lo.String() != v.String() {
				t.Fatalf("%q: lazy %s, eager %s", b, lo, v)
			}
		}
	})
}
