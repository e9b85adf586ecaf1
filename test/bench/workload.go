package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// store is one system under test, as the workload sees it. Every method is
// called from many goroutines at once.
type store interface {
	Name() string
	Put(ctx context.Context, key, value []byte) error
	// Get is a linearizable read of a key that must exist.
	Get(ctx context.Context, key []byte) error
	// StaleGet may be served by any replica from its local state.
	StaleGet(ctx context.Context, key []byte) error
	// PIDs are the server processes, for RSS and CPU figures.
	PIDs() []int
}

// The operations a cell can run.
const (
	opPut      = "put"
	opGet      = "get"
	opStaleGet = "stale-get"
)

func doOp(ctx context.Context, s store, op string, key, value []byte) error {
	switch op {
	case opPut:
		return s.Put(ctx, key, value)
	case opGet:
		return s.Get(ctx, key)
	case opStaleGet:
		return s.StaleGet(ctx, key)
	}
	return fmt.Errorf("unknown op %q", op)
}

// keySize is the length of every key: the key's number, big-endian.
const keySize = 8

func key(i uint64) []byte {
	k := make([]byte, keySize)
	binary.BigEndian.PutUint64(k, i)
	return k
}

// values is a pool of random values, so that the workload does not spend its
// time in the random number generator.
type values [][]byte

func newValues(n, size int, seed uint64) values {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	out := make(values, n)
	for i := range out {
		v := make([]byte, size)
		for j := 0; j+8 <= size; j += 8 {
			binary.LittleEndian.PutUint64(v[j:], r.Uint64())
		}
		for j := size - size%8; j < size; j++ {
			v[j] = byte(r.Uint64())
		}
		out[i] = v
	}
	return out
}

// cell is the outcome of one (system, op, clients) run.
type cell struct {
	Ops      int64         // completed within the measured window
	Errors   int64         // failed within the measured window
	FirstErr string        // the first error seen, for the report
	Window   time.Duration // the measured window
	P50, P99 time.Duration
	Max      time.Duration
	// CPU used in the window, in seconds: by the system's server
	// processes, by the driver (whose client library is part of the cost),
	// and by the whole machine.
	ServerCPU, DriverCPU, MachineCPU float64
}

func (c cell) Rate() float64 {
	if c.Window <= 0 {
		return 0
	}
	return float64(c.Ops) / c.Window.Seconds()
}

// runCell runs op from clients goroutines for warmup+window, sharing one
// client (s), and measures the ops that start and finish inside the window.
func runCell(ctx context.Context, s store, op string, clients int, warmup, window time.Duration, keyspace uint64, vals values) cell {
	start := time.Now()
	from, to := start.Add(warmup), start.Add(warmup+window)
	// An op that hangs must not hang the benchmark.
	cctx, cancel := context.WithDeadline(ctx, to.Add(30*time.Second))
	defer cancel()

	var (
		wg       sync.WaitGroup
		nErr     atomic.Int64
		errOnce  sync.Once
		firstErr string
		lats     = make([][]time.Duration, clients)
	)
	for g := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g)+1, uint64(start.UnixNano())))
			var mine []time.Duration
			for {
				t0 := time.Now()
				if !t0.Before(to) || cctx.Err() != nil {
					break
				}
				k := key(r.Uint64N(keyspace))
				err := doOp(cctx, s, op, k, vals[r.IntN(len(vals))])
				t1 := time.Now()
				if t0.Before(from) || t1.After(to) {
					continue // warm-up, or straddles the end
				}
				if err != nil {
					nErr.Add(1)
					errOnce.Do(func() { firstErr = err.Error() })
					continue
				}
				mine = append(mine, t1.Sub(t0))
			}
			lats[g] = mine
		}()
	}

	// CPU is sampled at the edges of the window.
	var c cell
	sleepUntil(cctx, from)
	srv0, drv0 := sumTicks(s.PIDs()), selfTicks()
	busy0, _ := machineTicks()
	sleepUntil(cctx, to)
	srv1, drv1 := sumTicks(s.PIDs()), selfTicks()
	busy1, _ := machineTicks()
	wg.Wait()

	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	slices.Sort(all)
	c.Ops, c.Errors, c.FirstErr, c.Window = int64(len(all)), nErr.Load(), firstErr, window
	c.P50, c.P99 = percentile(all, 0.50), percentile(all, 0.99)
	if len(all) > 0 {
		c.Max = all[len(all)-1]
	}
	c.ServerCPU = float64(srv1-srv0) / clockTicks
	c.DriverCPU = float64(drv1-drv0) / clockTicks
	c.MachineCPU = float64(busy1-busy0) / clockTicks
	return c
}

// percentile is the nearest-rank percentile of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p*float64(len(sorted))+0.999999999) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func sleepUntil(ctx context.Context, t time.Time) {
	d := time.Until(t)
	if d <= 0 {
		return
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
	case <-tm.C:
	}
}

// loadResult is the outcome of writing a range of keys.
type loadResult struct {
	Written  uint64 // keys [from, from+Written) were written, with no gap
	Errors   int64
	FirstErr string
	Elapsed  time.Duration
	TimedOut bool
}

// load writes every key in [from, to) once with writers goroutines, until
// done or until limit passes. Keys are handed out in order, so the keys
// written form a prefix of the range (up to the writes in flight when the
// limit passed, which are awaited). A failed write is retried until it
// succeeds or the context ends, so no key is skipped.
func load(ctx context.Context, s store, from, to uint64, writers int, limit time.Duration, vals values, progress func(done uint64)) loadResult {
	start := time.Now()
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next     atomic.Uint64
		done     atomic.Uint64
		nErr     atomic.Int64
		errOnce  sync.Once
		firstErr string
		timedOut atomic.Bool
		wg       sync.WaitGroup
	)
	next.Store(from)
	stopAt := start.Add(limit)
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if time.Now().After(stopAt) {
					timedOut.Store(true)
					return
				}
				i := next.Add(1) - 1
				if i >= to {
					return
				}
				v := vals[(int(i)+g)%len(vals)]
				for {
					wctx, wcancel := context.WithTimeout(lctx, time.Minute)
					err := s.Put(wctx, key(i), v)
					wcancel()
					if err == nil {
						break
					}
					nErr.Add(1)
					errOnce.Do(func() { firstErr = err.Error() })
					if lctx.Err() != nil {
						return
					}
					time.Sleep(100 * time.Millisecond)
				}
				done.Add(1)
			}
		}()
	}
	stop := make(chan struct{})
	var pwg sync.WaitGroup
	if progress != nil {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			t := time.NewTicker(30 * time.Second)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
					progress(done.Load())
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	pwg.Wait()
	// Every key handed out below next was written (or the context ended).
	written := min(next.Load(), to) - from
	if ctx.Err() != nil {
		written = done.Load() // keys may be missing; report what is known
	}
	return loadResult{
		Written: written, Errors: nErr.Load(), FirstErr: firstErr,
		Elapsed: time.Since(start), TimedOut: timedOut.Load(),
	}
}
