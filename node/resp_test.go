package node

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/zerogrid/zerogrid/grid"
)

func TestRESPGlob(t *testing.T) {
	for _, c := range []struct {
		pattern, s string
		want       bool
	}{
		{"*", "", true}, {"*", "abc", true}, {"a*", "abc", true}, {"a*", "bac", false},
		{"*c", "abc", true}, {"a?c", "abc", true}, {"a?c", "ac", false}, {"a**c", "axyc", true},
		{"h[ae]llo", "hello", true}, {"h[ae]llo", "hillo", false}, {"h[^e]llo", "hallo", true},
		{"h[^e]llo", "hello", false}, {"h[a-b]llo", "hbllo", true}, {"h[b-a]llo", "hallo", true},
		{`a\*b`, "a*b", true}, {`a\*b`, "axb", false}, {"user:{1}:*", "user:{1}:name", true},
		{"[", "", false}, {"abc", "ab", false}, {"ab", "abc", false},
	} {
		if got := globMatch(c.pattern, c.s); got != c.want {
			t.Errorf("globMatch(%q, %q) = %v, want %v", c.pattern, c.s, got, c.want)
		}
	}
}

func TestRESPParseInt64(t *testing.T) {
	for s, want := range map[string]bool{
		"0": true, "-1": true, "9223372036854775807": true, "-9223372036854775808": true,
		"9223372036854775808": false, "": false, "-": false, "+1": false, "01": false, "-0": false,
		" 1": false, "1.5": false, "1e3": false, "abc": false,
	} {
		if _, ok := parseInt64([]byte(s)); ok != want {
			t.Errorf("parseInt64(%q): ok=%v, want %v", s, ok, want)
		}
	}
}

// TestRESPReader: a command over the limits is read and dropped (its
// refusal says why) and the next command is read; what is not RESP is a
// protocol error.
func TestRESPReader(t *testing.T) {
	limits := grid.Limits{MaxKeyBytes: 16, MaxValueBytes: 100}
	var held int64
	hold := func(n int64) (func(), error) {
		if held+n > 1000 {
			return nil, grid.ErrOverloaded
		}
		held += n
		return func() { held -= n }, nil
	}
	bulk := func(s string) string { return fmt.Sprintf("$%d\r\n%s\r\n", len(s), s) }
	input := "*3\r\n" + bulk("SET") + bulk("k") + bulk(strings.Repeat("v", 101)) + // over the value limit
		"*2\r\n" + bulk("GET") + bulk("k") +
		"PING x\r\n" + // inline
		"*3\r\n" + bulk("SET") + bulk(strings.Repeat("a", 90)) + bulk(strings.Repeat("b", 90)) + // over the command limit
		"*1\r\n" + bulk("PING")
	rd := newRESPReader(strings.NewReader(input), limits, 150, hold)
	rd.holdOver = 50
	var refused *respRefusal
	if _, err := rd.next(); !errors.As(err, &refused) || !errors.Is(refused.err, grid.ErrValueTooLarge) {
		t.Fatalf("an oversized value: %v", err)
	}
	rd.release()
	for _, want := range []string{"GET k", "PING x"} {
		args, err := rd.next()
		if err != nil || string(joinArgs(args)) != want {
			t.Fatalf("want %q, got %q, %v", want, joinArgs(args), err)
		}
		rd.release()
	}
	if _, err := rd.next(); !errors.As(err, &refused) || !errors.Is(refused.err, grid.ErrRequestTooLarge) {
		t.Fatalf("an oversized command: %v", err)
	}
	rd.release()
	if held != 0 {
		t.Fatalf("%d bytes of the budget still held after release", held)
	}
	if args, err := rd.next(); err != nil || string(joinArgs(args)) != "PING" {
		t.Fatalf("after the refusals: %q, %v", joinArgs(args), err)
	}
	for _, bad := range []string{"*5000\r\n", "*1\r\n$2000000000\r\n", "*1\r\n:1\r\n", "*1\r\n$1\r\nab\r\n", "*x\r\n", strings.Repeat("a", respMaxInline+10)} {
		var perr respProtocolError
		if _, err := newRESPReader(strings.NewReader(bad), limits, 150, hold).next(); !errors.As(err, &perr) {
			t.Errorf("%.20q: %v, want a protocol error", bad, err)
		}
	}
}

func joinArgs(args [][]byte) []byte {
	var b []byte
	for i, a := range args {
		if i > 0 {
			b = append(b, ' ')
		}
		b = append(b, a...)
	}
	return b
}
