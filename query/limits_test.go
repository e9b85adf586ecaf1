package query

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"
)

var oneRecord = [][]kv{{{"a", []byte(`{"amount": 1}`)}}}

func limitJob(script string, lim Limits) Job {
	return Job{Map: "m", Script: script, Limits: lim}
}

func TestRunawayScriptsAreStopped(t *testing.T) {
	before := runtime.NumGoroutine()
	cases := []struct {
		name   string
		job    Job
		want   error
		naming string
	}{
		{
			name:   "infinite loop",
			job:    limitJob("def map(k, v):\n    while True:\n        pass\n", Limits{Steps: 100_000}),
			want:   ErrStepBudget,
			naming: "Limits.Steps",
		},
		{
			name:   "recursion",
			job:    limitJob("def f(n):\n    return f(n + 1)\ndef map(k, v):\n    f(0)\n", Limits{Steps: 100_000}),
			want:   ErrStepBudget,
			naming: "Limits.Steps",
		},
		{
			name:   "step budget in a filter",
			job:    Job{Map: "m", Agg: "count", Filter: "len([x for x in range(1000000)]) > 0", Limits: Limits{Steps: 10_000}},
			want:   ErrStepBudget,
			naming: "Limits.Steps",
		},
		{
			name:   "deadline",
			job:    limitJob("def map(k, v):\n    while True:\n        pass\n", Limits{Steps: 1 << 62, Deadline: 150 * time.Millisecond}),
			want:   ErrDeadline,
			naming: "Limits.Deadline",
		},
		{
			// Each iteration is a handful of steps but a MiB of heap: the
			// memory cap fires long before the step budget.
			name: "unbounded allocation",
			job: limitJob("def map(k, v):\n    keep = []\n    while True:\n        keep.append('x' * (1 << 20))\n",
				Limits{Steps: 1 << 62, Deadline: time.Minute, MemoryBytes: 32 << 20}),
			want:   ErrMemoryCap,
			naming: "Limits.MemoryBytes",
		},
		{
			name:   "too much output",
			job:    limitJob("def map(k, v):\n    for i in range(100000):\n        emit(str(i), i)\n", Limits{OutputBytes: 64 << 10}),
			want:   ErrOutputCap,
			naming: "Limits.OutputBytes",
		},
		{
			name:   "too many groups",
			job:    Job{Map: "m", Agg: "count by [x for x in range(100000)]", Limits: Limits{OutputBytes: 1 << 10}},
			want:   ErrOutputCap,
			naming: "Limits.OutputBytes",
		},
		{
			name: "too many groups from a Go-sized scan",
			job:  Job{Map: "m", Agg: "distinct(k)", Limits: Limits{OutputBytes: 1 << 10}},
			want: ErrOutputCap,
		},
		{
			name:   "top level of a script",
			job:    limitJob("x = [i for i in range(1000000)]\ndef map(k, v):\n    pass\n", Limits{Steps: 1000}),
			want:   ErrStepBudget,
			naming: "Limits.Steps",
		},
	}
	many := make([]kv, 2000)
	for i := range many {
		many[i] = kv{fmt.Sprintf("key%05d", i), []byte("1")}
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			parts := oneRecord
			if strings.Contains(c.name, "Go-sized") {
				parts = [][]kv{many}
			}
			_, err := runJob(t, c.job, nil, parts, nil)
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			if !strings.Contains(err.Error(), c.naming) {
				t.Fatalf("err = %v, does not name %s", err, c.naming)
			}
			t.Logf("%v after %v", err, time.Since(start).Round(time.Millisecond))
		})
	}
	// Every run waits for its watchdog (wg.Wait), but a goroutine that has
	// called wg.Done may take a moment more to exit: wait for the count.
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		runtime.Gosched()
	}
	if after := runtime.NumGoroutine(); after > before {
		buf := make([]byte, 1<<16)
		t.Fatalf("%d goroutines before, %d after: a watchdog leaked\n%s", before, after, buf[:runtime.Stack(buf, true)])
	}
}

// Where a loop was stopped is part of the message.
func TestLimitErrorSaysWhere(t *testing.T) {
	_, err := runJob(t, limitJob("def map(k, v):\n    x = 0\n    while True:\n        x += 1\n", Limits{Steps: 1000}), nil, oneRecord, nil)
	if !errors.Is(err, ErrStepBudget) || !strings.Contains(err.Error(), "script:") {
		t.Fatalf("err = %v, want a step budget error with a script position", err)
	}
}

func TestCancelStopsATask(t *testing.T) {
	prog := mustCompile(t, limitJob("def map(k, v):\n    while True:\n        pass\n", Limits{Steps: 1 << 62}))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	started := make(chan struct{})
	go func() {
		_, _, err := prog.RunTask(ctx, func(fn func(k, v []byte) error) error {
			close(started)
			return fn([]byte("a"), []byte("1"))
		})
		done <- err
	}()
	<-started
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestGoFunctionSeesDeadline(t *testing.T) {
	reg := NewRegistry()
	if err := reg.Register("slow", GoFunc{Map: func(ctx context.Context, _, _, _ []byte, _ func(string, any) error) error {
		<-ctx.Done()
		return ctx.Err()
	}}); err != nil {
		t.Fatal(err)
	}
	_, err := runJob(t, Job{Func: "slow", Limits: Limits{Deadline: 50 * time.Millisecond}}, reg, oneRecord, nil)
	if !errors.Is(err, ErrDeadline) {
		t.Fatalf("err = %v, want ErrDeadline", err)
	}
}

func TestScanErrorPassesThrough(t *testing.T) {
	prog := mustCompile(t, Job{Agg: "count"})
	boom := errors.New("disk on fire")
	_, _, err := prog.RunTask(t.Context(), func(func(k, v []byte) error) error { return boom })
	if !errors.Is(err, boom) || isQueryErr(err) {
		t.Fatalf("err = %v, want the scan's own error", err)
	}
}

func TestDefaultLimits(t *testing.T) {
	d := DefaultLimits()
	if d.Steps == 0 || d.Deadline == 0 || d.OutputBytes == 0 || d.MemoryBytes == 0 {
		t.Fatalf("defaults have a zero: %+v", d)
	}
	if got := mustCompile(t, Job{Agg: "count"}).Limits(); got != d {
		t.Fatalf("zero limits became %+v, want %+v", got, d)
	}
}
