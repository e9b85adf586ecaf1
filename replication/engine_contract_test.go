package replication

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

func TestEngineBolt(t *testing.T) {
	runEngineContract(t, func(t *testing.T, dir string) Engine {
		t.Helper()
		e, err := OpenEngine(EngineConfig{Dir: dir, Kind: "bbolt", SyncWrites: true})
		if err != nil {
			t.Fatalf("open bbolt engine: %v", err)
		}
		if got := e.Stats().Kind; got != "bbolt" {
			t.Fatalf("Stats().Kind = %q, want bbolt", got)
		}
		return e
	})
}

func TestEngineOpenConfig(t *testing.T) {
	t.Run("EveryProblemReported", func(t *testing.T) {
		_, err := OpenEngine(EngineConfig{Kind: "rocksdb", Profile: "huge"})
		if !errors.Is(err, errEngineConfig) {
			t.Fatalf("OpenEngine with a bad config: %v, want errEngineConfig", err)
		}
		multi, ok := err.(interface{ Unwrap() []error })
		if !ok || len(multi.Unwrap()) != 3 {
			t.Fatalf("want the 3 problems (Dir, Kind, Profile) reported together, got: %v", err)
		}
	})
	t.Run("PlatformDefault", func(t *testing.T) {
		want := "bbolt"
		if runtime.GOARCH != "arm" && strconv.IntSize == 64 {
			want = "badger"
		}
		e, err := OpenEngine(EngineConfig{Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		defer e.Close()
		if got := e.Stats().Kind; got != want {
			t.Fatalf("default engine on %s is %q, want %q", runtime.GOARCH, got, want)
		}
	})
	t.Run("FailedOpenReturnsNil", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.Mkdir(filepath.Join(dir, boltFileName), 0o750); err != nil {
			t.Fatal(err)
		}
		e, err := OpenEngine(EngineConfig{Dir: dir, Kind: "bbolt"})
		if err == nil || e != nil {
			t.Fatalf("OpenEngine over a directory named like the bbolt file = %v, %v; want nil and an error", e, err)
		}
	})
	t.Run("BadgerRefusedOn32Bit", func(t *testing.T) {
		if strconv.IntSize == 64 && runtime.GOARCH != "arm" {
			t.Skip("badger is supported here")
		}
		dir := t.TempDir()
		e, err := OpenEngine(EngineConfig{Dir: dir, Kind: "badger"})
		if err == nil {
			e.Close()
			t.Fatal("OpenEngine(badger) succeeded on a 32-bit platform")
		}
		if !errors.Is(err, errBadgerUnsupported) {
			t.Fatalf("OpenEngine(badger) = %v, want errBadgerUnsupported", err)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Fatalf("refused open left files behind: %v", entries)
		}
	})
}

// runEngineContract checks what the state machines rely on. open must return
// an open engine with SyncWrites on for dir, failing t if it cannot; engines
// are closed by the suite.
func runEngineContract(t *testing.T, open func(t *testing.T, dir string) Engine) {
	ctx := context.Background()
	openClosed := func(t *testing.T, dir string) Engine {
		t.Helper()
		e := open(t, dir)
		t.Cleanup(func() {
			if err := e.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
		return e
	}

	t.Run("SetGetOverwriteDelete", func(t *testing.T) {
		e := openClosed(t, t.TempDir())
		mustGetMissing(t, e, "k")
		write(t, e, set("k", "v1"), set("empty", ""))
		mustGet(t, e, "k", "v1")
		mustGet(t, e, "empty", "")
		write(t, e, set("k", "v2"))
		mustGet(t, e, "k", "v2")

		got, _ := e.Get([]byte("k"))
		got[0] = 'X'
		mustGet(t, e, "k", "v2") // the caller owns what Get returns

		write(t, e, del("k"))
		mustGetMissing(t, e, "k")
		write(t, e, del("never-set")) // deleting a missing key is fine
		mustGetMissing(t, e, "")

		// Ops apply in order: the last op on a key wins.
		write(t, e, set("a", "1"), del("a"), set("b", "1"), set("b", "2"), del("c"), set("c", "3"))
		mustGetMissing(t, e, "a")
		mustGet(t, e, "b", "2")
		mustGet(t, e, "c", "3")
		if err := e.Write(ctx, &Batch{}); err != nil {
			t.Fatalf("empty batch: %v", err)
		}
	})

	t.Run("BadBatchChangesNothing", func(t *testing.T) {
		e := openClosed(t, t.TempDir())
		for name, bad := range map[string]Op{
			"EmptyKey": {Key: nil, Value: []byte("v")},
			"LongKey":  {Key: bytes.Repeat([]byte("k"), 70_000), Value: []byte("v")},
		} {
			b := &Batch{}
			b.Set([]byte("good"), []byte("v"))
			b.Ops = append(b.Ops, bad)
			err := e.Write(ctx, b)
			if err == nil || errors.Is(err, ErrBatchTooLarge) {
				t.Errorf("%s: Write = %v, want an invalid-op error", name, err)
			}
			mustGetMissing(t, e, "good")
		}
		cancelled, cancel := context.WithCancel(ctx)
		cancel()
		if err := e.Write(cancelled, batch(set("good", "v"))); !errors.Is(err, context.Canceled) {
			t.Errorf("Write with a cancelled context = %v, want context.Canceled", err)
		}
		mustGetMissing(t, e, "good")
	})

	t.Run("BatchAtomic", func(t *testing.T) {
		e := openClosed(t, t.TempDir())
		const n = 500
		write(t, e, set("old", "x"))
		b := &Batch{}
		for i := range n {
			b.Set(fmt.Appendf(nil, "atom/%04d", i), []byte("v"))
		}
		b.Del([]byte("old"))

		// A reader sees none of the batch or all of it, never part.
		done := make(chan error, 1)
		stop := make(chan struct{})
		go func() {
			for {
				select {
				case <-stop:
					done <- nil
					return
				default:
				}
				v, err := e.NewView()
				if err != nil {
					done <- err
					return
				}
				seen := countPrefix(t, v, "atom/")
				_, oldErr := v.Get([]byte("old"))
				v.Close()
				switch {
				case seen == 0 && oldErr == nil:
					continue
				case seen == n && errors.Is(oldErr, ErrEngineNotFound):
					done <- nil
					return
				default:
					done <- fmt.Errorf("view saw %d of %d keys, old key error %v", seen, n, oldErr)
					return
				}
			}
		}()
		if err := e.Write(ctx, b); err != nil {
			close(stop)
			<-done
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})

	t.Run("BatchTooLarge", func(t *testing.T) {
		e := openClosed(t, t.TempDir())
		limit := e.MaxBatchBytes()
		big := randomBytes(256 << 10)

		b := &Batch{}
		for i := 0; b.Size() <= limit; i++ {
			b.Set(fmt.Appendf(nil, "big/%03d", i), big)
		}
		if err := e.Write(ctx, b); !errors.Is(err, ErrBatchTooLarge) {
			t.Fatalf("Write of %d bytes (limit %d) = %v, want ErrBatchTooLarge", b.Size(), limit, err)
		}
		if n := countPrefixEngine(t, e, "big/"); n != 0 {
			t.Fatalf("refused batch wrote %d keys", n)
		}
		// Ops appended directly, bypassing Set, are counted too.
		raw := &Batch{Ops: slices.Clone(b.Ops)}
		if err := e.Write(ctx, raw); !errors.Is(err, ErrBatchTooLarge) {
			t.Fatalf("Write of a batch built without Set = %v, want ErrBatchTooLarge", err)
		}

		// The largest batch of large values that fits is taken whole.
		b.Ops = b.Ops[:len(b.Ops)-1]
		fits := &Batch{}
		for _, op := range b.Ops {
			fits.Set(op.Key, op.Value)
		}
		pad := limit - fits.Size() - opOverhead - len("pad")
		if pad > 0 {
			fits.Set([]byte("pad"), make([]byte, pad))
		}
		if err := e.Write(ctx, fits); err != nil {
			t.Fatalf("Write of %d bytes (limit %d): %v", fits.Size(), limit, err)
		}
		if n := countPrefixEngine(t, e, "big/"); n != len(b.Ops) {
			t.Fatalf("after writing %d big values, %d are there", len(b.Ops), n)
		}
	})

	t.Run("ManyTinyOps", func(t *testing.T) {
		// A batch of tiny ops within MaxBatchBytes is written whole or
		// refused with ErrBatchTooLarge (badger also caps the op count);
		// it is never partly written nor refused otherwise.
		e := openClosed(t, t.TempDir())
		b := &Batch{}
		for i := 0; ; i++ {
			k := fmt.Appendf(nil, "t/%06d", i)
			if b.Size()+len(k)+opOverhead > e.MaxBatchBytes() {
				break
			}
			b.Set(k, nil)
		}
		err := e.Write(ctx, b)
		n := countPrefixEngine(t, e, "t/")
		switch {
		case err == nil && n == b.Len():
		case errors.Is(err, ErrBatchTooLarge) && n == 0:
		default:
			t.Fatalf("Write of %d tiny ops: %v, then %d keys present", b.Len(), err, n)
		}
	})

	t.Run("ViewIsSnapshot", func(t *testing.T) {
		e := openClosed(t, t.TempDir())
		write(t, e, set("s/a", "1"), set("s/b", "1"))
		v, err := e.NewView()
		if err != nil {
			t.Fatal(err)
		}
		defer v.Close()
		write(t, e, set("s/a", "2"), del("s/b"), set("s/c", "2"))

		viewGet(t, v, "s/a", "1")
		viewGet(t, v, "s/b", "1")
		if _, err := v.Get([]byte("s/c")); !errors.Is(err, ErrEngineNotFound) {
			t.Fatalf("view Get of a key written after it = %v, want ErrEngineNotFound", err)
		}
		if got, want := collect(t, v, "s/", ""), []string{"s/a=1", "s/b=1"}; !slices.Equal(got, want) {
			t.Fatalf("view Iterate = %v, want %v", got, want)
		}
		mustGet(t, e, "s/a", "2")

		v2, err := e.NewView()
		if err != nil {
			t.Fatal(err)
		}
		defer v2.Close()
		if got, want := collect(t, v2, "s/", ""), []string{"s/a=2", "s/c=2"}; !slices.Equal(got, want) {
			t.Fatalf("new view Iterate = %v, want %v", got, want)
		}
	})

	t.Run("Iterate", func(t *testing.T) {
		e := openClosed(t, t.TempDir())
		keys := []string{"a", "b/", "b/1", "b/2", "b/3", "b/30", "b0", "c/1"}
		b := &Batch{}
		for _, i := range rand.New(rand.NewPCG(1, 2)).Perm(len(keys)) {
			b.Set([]byte(keys[i]), []byte("v"+keys[i]))
		}
		if err := e.Write(ctx, b); err != nil {
			t.Fatal(err)
		}
		v, err := e.NewView()
		if err != nil {
			t.Fatal(err)
		}
		defer v.Close()

		for _, tc := range []struct {
			prefix, after string // after "" means nil
			want          []string
		}{
			{"b/", "", []string{"b/", "b/1", "b/2", "b/3", "b/30"}},
			{"b/", "b/", []string{"b/1", "b/2", "b/3", "b/30"}},
			{"b/", "b/2", []string{"b/3", "b/30"}},
			{"b/", "b/25", []string{"b/3", "b/30"}},
			{"b/", "a", []string{"b/", "b/1", "b/2", "b/3", "b/30"}},
			{"b/", "b/30", nil},
			{"b/", "z", nil},
			{"x/", "", nil},
			{"", "", keys},
			{"", "b/3", []string{"b/30", "b0", "c/1"}},
		} {
			var got []string
			for _, kv := range collect(t, v, tc.prefix, tc.after) {
				k, val, _ := bytes.Cut([]byte(kv), []byte("="))
				if string(val) != "v"+string(k) {
					t.Errorf("key %s has value %q", k, val)
				}
				got = append(got, string(k))
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("Iterate(%q, after %q) = %v, want %v", tc.prefix, tc.after, got, tc.want)
			}
		}

		calls := 0
		err = v.Iterate([]byte("b/"), nil, func(k, _ []byte) (bool, error) {
			calls++
			return calls < 2, nil
		})
		if err != nil || calls != 2 {
			t.Errorf("stopping after 2: %d calls, error %v", calls, err)
		}

		errStop := errors.New("stop here")
		calls = 0
		err = v.Iterate(nil, nil, func(k, _ []byte) (bool, error) {
			calls++
			return true, errStop
		})
		if !errors.Is(err, errStop) || calls != 1 {
			t.Errorf("fn error: Iterate = %v after %d calls, want errStop after 1", err, calls)
		}
	})

	t.Run("DropPrefix", func(t *testing.T) {
		dir := t.TempDir()
		e := open(t, dir)
		const n = 12_000 // several of bbolt's delete chunks
		b := &Batch{}
		for i := range n {
			b.Set(fmt.Appendf(nil, "p1/%05d", i), []byte("value"))
			if b.Len() == 2000 {
				write(t, e, b.Ops...)
				b.Reset()
			}
		}
		write(t, e, set("p1", "x"), set("p10/a", "x"), set("p0/a", "x"), set("p2/a", "x"), set("p1.", "x"))
		if err := e.DropPrefix(ctx, []byte("p1/")); err != nil {
			t.Fatal(err)
		}
		want := []string{"p0/a=x", "p1=x", "p1.=x", "p10/a=x", "p2/a=x"}
		if got := collectEngine(t, e, ""); !slices.Equal(got, want) {
			t.Fatalf("after DropPrefix(p1/): %v, want %v", got, want)
		}
		if err := e.DropPrefix(ctx, []byte("none/")); err != nil {
			t.Fatalf("DropPrefix of an absent prefix: %v", err)
		}
		if err := e.DropPrefix(ctx, nil); err == nil {
			t.Fatal("DropPrefix(nil) succeeded; it must refuse rather than drop everything")
		}
		write(t, e, set("p1/00001", "again"))

		// The drop is durable.
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		e = openClosed(t, dir)
		want = []string{"p0/a=x", "p1=x", "p1.=x", "p1/00001=again", "p10/a=x", "p2/a=x"}
		if got := collectEngine(t, e, ""); !slices.Equal(got, want) {
			t.Fatalf("after reopening: %v, want %v", got, want)
		}
	})

	t.Run("Reopen", func(t *testing.T) {
		dir := t.TempDir()
		e := open(t, dir)
		big := randomBytes(1 << 20)
		b := &Batch{}
		for i := range 100 {
			b.Set(fmt.Appendf(nil, "r/%03d", i), fmt.Appendf(nil, "v%d", i))
		}
		b.Set([]byte("big"), big)
		write(t, e, b.Ops...)
		write(t, e, del("r/050"))
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		if err := e.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}

		e = openClosed(t, dir)
		if n := countPrefixEngine(t, e, "r/"); n != 99 {
			t.Fatalf("after reopening, %d keys, want 99", n)
		}
		mustGet(t, e, "r/007", "v7")
		mustGetMissing(t, e, "r/050")
		if got, err := e.Get([]byte("big")); err != nil || !bytes.Equal(got, big) {
			t.Fatalf("1 MiB value after reopening: %d bytes, error %v", len(got), err)
		}
		if st := e.Stats(); st.DiskBytes <= 0 {
			t.Fatalf("Stats after reopening = %+v, want DiskBytes > 0", st)
		}
	})

	t.Run("LargeValue", func(t *testing.T) {
		e := openClosed(t, t.TempDir())
		big := randomBytes(1 << 20)
		write(t, e, set("big/1", string(big)), set("big/2", "small"))
		if got, err := e.Get([]byte("big/1")); err != nil || !bytes.Equal(got, big) {
			t.Fatalf("Get of a 1 MiB value: %d bytes, error %v", len(got), err)
		}
		v, err := e.NewView()
		if err != nil {
			t.Fatal(err)
		}
		defer v.Close()
		if got, err := v.Get([]byte("big/1")); err != nil || !bytes.Equal(got, big) {
			t.Fatalf("view Get of a 1 MiB value: %d bytes, error %v", len(got), err)
		}
		var sizes []int
		err = v.Iterate([]byte("big/"), nil, func(k, val []byte) (bool, error) {
			if string(k) == "big/1" && !bytes.Equal(val, big) {
				return false, errors.New("iterated 1 MiB value differs")
			}
			sizes = append(sizes, len(val))
			return true, nil
		})
		if err != nil || !slices.Equal(sizes, []int{1 << 20, 5}) {
			t.Fatalf("Iterate: sizes %v, error %v", sizes, err)
		}
	})

	t.Run("ManyKeys", func(t *testing.T) {
		e := openClosed(t, t.TempDir())
		const n = 20_000
		b := &Batch{}
		for i := range n {
			b.Set(fmt.Appendf(nil, "m/%06d", i), fmt.Appendf(nil, "value-%d", i))
			if b.Len() == 1000 {
				write(t, e, b.Ops...)
				b.Reset()
			}
		}
		v, err := e.NewView()
		if err != nil {
			t.Fatal(err)
		}
		defer v.Close()
		var prev []byte
		count := 0
		err = v.Iterate([]byte("m/"), nil, func(k, val []byte) (bool, error) {
			if prev != nil && bytes.Compare(prev, k) >= 0 {
				return false, fmt.Errorf("key %q after %q", k, prev)
			}
			prev = append(prev[:0], k...)
			count++
			return true, nil
		})
		if err != nil || count != n {
			t.Fatalf("Iterate: %d keys, error %v; want %d", count, err, n)
		}
		if got := countAfter(t, v, "m/", "m/009999"); got != n-10_000 {
			t.Fatalf("Iterate after m/009999: %d keys, want %d", got, n-10_000)
		}
		viewGet(t, v, "m/012345", "value-12345")
	})

	t.Run("Concurrent", func(t *testing.T) {
		e := openClosed(t, t.TempDir())
		const writers, rounds = 4, 50
		errc := make(chan error, writers+4)
		var wg sync.WaitGroup
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for n := range rounds {
					b := &Batch{}
					b.Set(fmt.Appendf(nil, "c%d/k%04d", w, n), []byte("v"))
					b.Set(fmt.Appendf(nil, "c%d/count", w), strconv.AppendInt(nil, int64(n+1), 10))
					if err := e.Write(ctx, b); err != nil {
						errc <- err
						return
					}
				}
			}()
		}
		wg.Add(1)
		go func() { // Sync and DropPrefix of another prefix, alongside the writes
			defer wg.Done()
			for range 5 {
				if err := e.Write(ctx, batch(set("scratch/a", "1"), set("scratch/b", "1"))); err != nil {
					errc <- err
					return
				}
				if err := e.Sync(); err != nil {
					errc <- err
					return
				}
				if err := e.DropPrefix(ctx, []byte("scratch/")); err != nil {
					errc <- err
					return
				}
				if _, err := e.Get([]byte("scratch/a")); !errors.Is(err, ErrEngineNotFound) {
					errc <- fmt.Errorf("scratch/a after DropPrefix: %v", err)
					return
				}
			}
		}()
		stop := make(chan struct{})
		var readers sync.WaitGroup
		for range 2 {
			readers.Add(1)
			go func() {
				defer readers.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					if err := checkCounts(e, writers, -1); err != nil {
						errc <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(stop)
		readers.Wait()
		close(errc)
		for err := range errc {
			t.Error(err)
		}
		if err := checkCounts(e, writers, rounds); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("Verify", func(t *testing.T) {
		dir := t.TempDir()
		e := open(t, dir)
		b := &Batch{}
		for i := range 3000 {
			b.Set(fmt.Appendf(nil, "v/%05d", i), randomBytes(100))
		}
		write(t, e, b.Ops...)
		if err := e.Verify(ctx); err != nil {
			t.Fatalf("Verify: %v", err)
		}
		if err := e.Close(); err != nil { // badger writes its tables at close
			t.Fatal(err)
		}
		e = openClosed(t, dir)
		if err := e.Verify(ctx); err != nil {
			t.Fatalf("Verify after reopening: %v", err)
		}
		cancelled, cancel := context.WithCancel(ctx)
		cancel()
		if err := e.Verify(cancelled); !errors.Is(err, context.Canceled) {
			t.Fatalf("Verify with a cancelled context = %v, want context.Canceled", err)
		}
	})

	t.Run("Close", func(t *testing.T) {
		e := open(t, t.TempDir())
		write(t, e, set("k", "v"))
		v, err := e.NewView()
		if err != nil {
			t.Fatal(err)
		}
		if err := e.Close(); err == nil {
			t.Fatal("Close with a view open succeeded")
		}
		mustGet(t, e, "k", "v") // still open
		v.Close()
		v.Close()
		if _, err := v.Get([]byte("k")); err == nil {
			t.Fatal("Get on a closed view succeeded")
		}
		if err := v.Iterate(nil, nil, func(k, v []byte) (bool, error) { return true, nil }); err == nil {
			t.Fatal("Iterate on a closed view succeeded")
		}
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		if err := e.Write(ctx, batch(set("k", "v2"))); err == nil {
			t.Fatal("Write after Close succeeded")
		}
		if _, err := e.Get([]byte("k")); err == nil || errors.Is(err, ErrEngineNotFound) {
			t.Fatalf("Get after Close = %v, want a closed error", err)
		}
		if _, err := e.NewView(); err == nil {
			t.Fatal("NewView after Close succeeded")
		}
		if err := e.DropPrefix(ctx, []byte("k")); err == nil {
			t.Fatal("DropPrefix after Close succeeded")
		}
		if err := e.Sync(); err == nil {
			t.Fatal("Sync after Close succeeded")
		}
		if err := e.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	})

	t.Run("NoGoroutineLeak", func(t *testing.T) {
		before := runtime.NumGoroutine()
		dir := t.TempDir()
		e := open(t, dir)
		write(t, e, set("k", "v"), set("big", string(randomBytes(128<<10))))
		if err := e.DropPrefix(ctx, []byte("big")); err != nil {
			t.Fatal(err)
		}
		v, err := e.NewView()
		if err != nil {
			t.Fatal(err)
		}
		countPrefix(t, v, "")
		v.Close()
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				t.Fatalf("%d goroutines before open, %d after Close:\n%s",
					before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
			}
			time.Sleep(10 * time.Millisecond) // polling a condition, with a deadline
		}
	})

	t.Run("Stats", func(t *testing.T) {
		e := openClosed(t, t.TempDir())
		st := e.Stats()
		if st.Kind != "badger" && st.Kind != "bbolt" {
			t.Fatalf("Stats().Kind = %q", st.Kind)
		}
		if st.DiskBytes < 0 {
			t.Fatalf("Stats().DiskBytes = %d", st.DiskBytes)
		}
		if e.MaxBatchBytes() < 1<<20+4<<10+2*opOverhead+64 {
			t.Fatalf("MaxBatchBytes %d cannot take a 1 MiB value with a 4 KiB key and an applied index",
				e.MaxBatchBytes())
		}
	})
}

// checkCounts checks, in one view, that each writer's count key matches the
// keys it wrote in the same batches; want >= 0 also checks the count.
func checkCounts(e Engine, writers, want int) error {
	v, err := e.NewView()
	if err != nil {
		return err
	}
	defer v.Close()
	for w := range writers {
		count := 0
		raw, err := v.Get(fmt.Appendf(nil, "c%d/count", w))
		switch {
		case errors.Is(err, ErrEngineNotFound):
		case err != nil:
			return err
		default:
			if count, err = strconv.Atoi(string(raw)); err != nil {
				return err
			}
		}
		keys := 0
		err = v.Iterate(fmt.Appendf(nil, "c%d/k", w), nil, func(k, _ []byte) (bool, error) {
			keys++
			return true, nil
		})
		if err != nil {
			return err
		}
		if keys != count || (want >= 0 && count != want) {
			return fmt.Errorf("writer %d: count %d, %d keys (want %d)", w, count, keys, want)
		}
	}
	return nil
}

func set(k, v string) Op { return Op{Key: []byte(k), Value: []byte(v)} }
func del(k string) Op    { return Op{Key: []byte(k), Delete: true} }

func batch(ops ...Op) *Batch {
	b := &Batch{}
	for _, op := range ops {
		if op.Delete {
			b.Del(op.Key)
		} else {
			b.Set(op.Key, op.Value)
		}
	}
	return b
}

func write(t *testing.T, e Engine, ops ...Op) {
	t.Helper()
	if err := e.Write(context.Background(), batch(ops...)); err != nil {
		t.Fatalf("Write: %v", err)
	}
}

func mustGet(t *testing.T, e Engine, k, want string) {
	t.Helper()
	got, err := e.Get([]byte(k))
	if err != nil || string(got) != want {
		t.Fatalf("Get(%q) = %q, %v; want %q", k, got, err, want)
	}
	if got == nil {
		t.Fatalf("Get(%q) returned a nil slice for a present key", k)
	}
}

func mustGetMissing(t *testing.T, e Engine, k string) {
	t.Helper()
	if got, err := e.Get([]byte(k)); !errors.Is(err, ErrEngineNotFound) {
		t.Fatalf("Get(%q) = %q, %v; want ErrEngineNotFound", k, got, err)
	}
}

func viewGet(t *testing.T, v View, k, want string) {
	t.Helper()
	got, err := v.Get([]byte(k))
	if err != nil || string(got) != want {
		t.Fatalf("view Get(%q) = %q, %v; want %q", k, got, err, want)
	}
}

// collect lists "key=value" for prefix, after ("" means nil).
func collect(t *testing.T, v View, prefix, after string) []string {
	t.Helper()
	var afterB []byte
	if after != "" {
		afterB = []byte(after)
	}
	var out []string
	err := v.Iterate([]byte(prefix), afterB, func(k, val []byte) (bool, error) {
		out = append(out, string(k)+"="+string(val))
		return true, nil
	})
	if err != nil {
		t.Fatalf("Iterate(%q, %q): %v", prefix, after, err)
	}
	return out
}

func collectEngine(t *testing.T, e Engine, prefix string) []string {
	t.Helper()
	v, err := e.NewView()
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	return collect(t, v, prefix, "")
}

func countAfter(t *testing.T, v View, prefix, after string) int {
	t.Helper()
	var afterB []byte
	if after != "" {
		afterB = []byte(after)
	}
	n := 0
	err := v.Iterate([]byte(prefix), afterB, func(k, _ []byte) (bool, error) {
		n++
		return true, nil
	})
	if err != nil {
		t.Errorf("Iterate(%q): %v", prefix, err)
	}
	return n
}

func countPrefix(t *testing.T, v View, prefix string) int { return countAfter(t, v, prefix, "") }

func countPrefixEngine(t *testing.T, e Engine, prefix string) int {
	t.Helper()
	v, err := e.NewView()
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	return countPrefix(t, v, prefix)
}

func randomBytes(n int) []byte {
	r := rand.New(rand.NewPCG(uint64(n), 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}
