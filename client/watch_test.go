package client_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/zerogrid/zerogrid/client"
	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// fakeWatchLog is the change history every fake node serves, per partition,
// with knobs that make streams misbehave the way real ones can.
type fakeWatchLog struct {
	changes map[int][]*gridpb.WatchChange
	pruned  map[int]uint64 // versions at or below are gone
	// breakAfter ends every stream with Unavailable after sending that many
	// changes (0: never), as a node crash does.
	breakAfter int
	// resend makes a stream start one change before the one asked for, as
	// a replica answering a resume might.
	resend  bool
	streams int
}

type fakeWatch struct {
	gridpb.UnimplementedWatchServer
	f *fakeCluster
	n int
}

func (s *fakeWatch) Watch(req *gridpb.WatchRequest, stream grpc.ServerStreamingServer[gridpb.WatchResponse]) error {
	f := s.f
	f.mu.Lock()
	f.watch.streams++
	p := int(req.Partition)
	log := f.watch.changes[p]
	pruned := f.watch.pruned[p]
	breakAfter, resend := f.watch.breakAfter, f.watch.resend
	f.mu.Unlock()
	last := pruned
	if len(log) > 0 {
		last = log[len(log)-1].Version
	}
	from := req.FromVersion
	switch {
	case from == 0:
		from = last + 1
	case from <= pruned:
		return gridpb.ToStatus(&grid.CompactedError{Partition: p, Requested: from, Oldest: pruned + 1})
	}
	sent := 0
	for i, ch := range log {
		if ch.Version < from && !(resend && i+1 < len(log) && log[i+1].Version >= from) {
			continue
		}
		if breakAfter > 0 && sent == breakAfter {
			return status.Error(codes.Unavailable, "fake: node crashed")
		}
		if err := stream.Send(&gridpb.WatchResponse{Changes: []*gridpb.WatchChange{ch}, ProgressVersion: ch.Version, OldestVersion: pruned + 1}); err != nil {
			return err
		}
		sent++
	}
	if err := stream.Send(&gridpb.WatchResponse{ProgressVersion: last, OldestVersion: pruned + 1}); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

// fakeHistory fills partition p's log with n changes at versions
// start, start+step, ...
func fakeHistory(f *fakeCluster, p, n int, start, step uint64) []*gridpb.WatchChange {
	var log []*gridpb.WatchChange
	for i := range n {
		v := start + uint64(i)*step
		val := []byte(fmt.Sprintf("p%d-v%d", p, v))
		log = append(log, &gridpb.WatchChange{Version: v, Events: []*gridpb.WatchEvent{
			{Type: gridpb.WatchEvent_PUT, Map: "m", Key: []byte(fmt.Sprintf("k%d", i)), Value: val, Crc: crc32c(val)},
		}})
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.watch.changes[p] = log
	return log
}

func nextN(t *testing.T, w *client.Watcher, n int) []client.Change {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out []client.Change
	for len(out) < n {
		ch, err := w.Next(ctx)
		if err != nil {
			t.Fatalf("after %d changes: %v", len(out), err)
		}
		out = append(out, ch)
	}
	return out
}

func TestWatchResumesAcrossBrokenStreamsWithoutGapsOrDuplicates(t *testing.T) {
	f, c := newFakeClient(t, 3, 2)
	logs := [][]*gridpb.WatchChange{fakeHistory(f, 0, 40, 3, 1), fakeHistory(f, 1, 30, 5, 3)}
	f.mu.Lock()
	f.watch.breakAfter, f.watch.resend = 7, true
	f.mu.Unlock()

	w, err := c.Map("m").Watch(context.Background(), nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	got := map[int][]client.Change{}
	for _, ch := range nextN(t, w, 70) {
		got[ch.Partition] = append(got[ch.Partition], ch)
	}
	for p, log := range logs {
		if len(got[p]) != len(log) {
			t.Fatalf("partition %d: %d changes delivered, %d in the log", p, len(got[p]), len(log))
		}
		for i, ch := range got[p] {
			want := log[i]
			if ch.Version != want.Version || string(ch.Events[0].Value) != string(want.Events[0].Value) || ch.Events[0].Type != client.EventPut {
				t.Fatalf("partition %d change %d: got %d %q, want %d %q", p, i, ch.Version, ch.Events[0].Value, want.Version, want.Events[0].Value)
			}
		}
	}
	cur := w.Cursor()
	if cur[0] != logs[0][39].Version+1 || cur[1] != logs[1][29].Version+1 {
		t.Fatalf("cursor %v after the whole history", cur)
	}
	f.mu.Lock()
	streams := f.watch.streams
	f.mu.Unlock()
	if streams < 10 {
		t.Fatalf("only %d streams: the breaks did not happen", streams)
	}
}

func TestWatchFromCursorResumesWhereItStopped(t *testing.T) {
	f, c := newFakeClient(t, 3, 2)
	logs := [][]*gridpb.WatchChange{fakeHistory(f, 0, 10, 2, 1), fakeHistory(f, 1, 10, 2, 1)}
	m := c.Map("m")
	w, err := m.Watch(context.Background(), nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	first := nextN(t, w, 7)
	w.Close()
	if _, err := w.Next(context.Background()); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("Next after Close: %v", err)
	}
	cur := w.Cursor()
	w, err = m.WatchFrom(context.Background(), nil, cur)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	rest := nextN(t, w, 20-len(first))
	seen := map[string]int{}
	for _, ch := range append(first, rest...) {
		seen[fmt.Sprintf("%d/%d", ch.Partition, ch.Version)]++
	}
	for p, log := range logs {
		for _, ch := range log {
			if n := seen[fmt.Sprintf("%d/%d", p, ch.Version)]; n != 1 {
				t.Fatalf("partition %d version %d delivered %d times across the resume (cursor %v)", p, ch.Version, n, cur)
			}
		}
	}
}

func TestWatchReportsCompactedHistory(t *testing.T) {
	f, c := newFakeClient(t, 3, 1)
	fakeHistory(f, 0, 5, 21, 1)
	f.mu.Lock()
	f.watch.pruned[0] = 20
	f.mu.Unlock()
	w, err := c.Watch(context.Background(), "m", nil, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	_, err = w.Next(context.Background())
	var ce *client.CompactedError
	if !errors.Is(err, client.ErrCompacted) || !errors.As(err, &ce) || ce.Oldest != 21 || ce.Requested != 4 {
		t.Fatalf("watch before the history: %v", err)
	}
	if _, err2 := w.Next(context.Background()); !errors.Is(err2, client.ErrCompacted) {
		t.Fatalf("a second Next after the terminal error: %v", err2)
	}
	w2, err := c.Watch(context.Background(), "m", nil, ce.Oldest)
	if err != nil {
		t.Fatal(err)
	}
	defer w2.Close()
	if got := nextN(t, w2, 5); got[0].Version != 21 || got[4].Version != 25 {
		t.Fatalf("watch from the oldest retained version: %v", got)
	}
}

func TestWatchPrefixWithHashTagReadsOnePartition(t *testing.T) {
	f, c := newFakeClient(t, 3, 8)
	p := f.Partition("m", []byte("user:{42}:"))
	fakeHistory(f, p, 3, 2, 1)
	w, err := c.Map("m").Watch(context.Background(), []byte("user:{42}:"), 1)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	nextN(t, w, 3)
	if cur := w.Cursor(); len(cur) != 1 || cur[p] != 5 {
		t.Fatalf("cursor %v: want only partition %d at 5", cur, p)
	}
}

func newFakeClient(t *testing.T, nodes, partitions int) (*fakeCluster, *client.Client) {
	t.Helper()
	f, err := newFakeCluster(nodes, partitions)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	f.mu.Lock()
	f.watch.changes, f.watch.pruned = map[int][]*gridpb.WatchChange{}, map[int]uint64{}
	f.mu.Unlock()
	return f, dial(t, f)
}

// Watching from now returns once every partition has said where now is, so
// the cursor is complete at once and every later write will be delivered.
func TestWatchFromNowKnowsWhereNowIs(t *testing.T) {
	f, c := newFakeClient(t, 3, 3)
	logs := [][]*gridpb.WatchChange{fakeHistory(f, 0, 4, 2, 1), fakeHistory(f, 1, 7, 3, 2), fakeHistory(f, 2, 1, 9, 1)}
	w, err := c.Map("m").Watch(context.Background(), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	cur := w.Cursor()
	for p, log := range logs {
		if want := log[len(log)-1].Version + 1; cur[p] != want {
			t.Fatalf("partition %d: cursor %d right after Watch, want %d (cursor %v)", p, cur[p], want, cur)
		}
	}
}
