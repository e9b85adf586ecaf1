package main

import (
	"io"
	"slices"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 200; i++ {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{{0.50, 100 * time.Millisecond}, {0.99, 198 * time.Millisecond}, {1, 200 * time.Millisecond}} {
		if got := percentile(d, tc.p); got != tc.want {
			t.Errorf("p%v of 1..200 ms = %v, want %v", tc.p*100, got, tc.want)
		}
	}
	if got := percentile(nil, 0.5); got != 0 {
		t.Errorf("percentile of nothing = %v, want 0", got)
	}
}

func TestParseFlags(t *testing.T) {
	c, err := parseFlags([]string{"-clients", "1, 8", "-ops", "put,stale-get"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.clients, []int{1, 8}) || !slices.Equal(c.ops, []string{"put", "stale-get"}) {
		t.Errorf("clients %v ops %v", c.clients, c.ops)
	}
	if _, err := parseFlags([]string{"-clients", "0,x", "-ops", "scan"}, io.Discard); err == nil {
		t.Error("bad -clients and -ops accepted")
	}
}
