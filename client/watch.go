package client

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// ErrCompacted matches a watch that asked for history a partition no longer
// keeps; errors.As with *CompactedError tells the oldest version retained.
var ErrCompacted = grid.ErrCompacted

// CompactedError names the partition, the version asked for and the oldest
// version the partition still retains.
type CompactedError = grid.CompactedError

// EventType says what happened to a key.
type EventType int

const (
	// EventPut: the key was set (Value and Expiry say to what).
	EventPut EventType = iota
	// EventDelete: the key was deleted (Delete, CompareAndDelete, a
	// transaction).
	EventDelete
	// EventExpire: the key's TTL ran out and the partition leader deleted
	// it through Raft.
	EventExpire
)

func (t EventType) String() string {
	switch t {
	case EventPut:
		return "put"
	case EventDelete:
		return "delete"
	case EventExpire:
		return "expire"
	}
	return fmt.Sprintf("EventType(%d)", int(t))
}

// Event is one change of one key.
type Event struct {
	Type  EventType
	Key   []byte
	Value []byte // EventPut only
	// Expiry of the new value (EventPut only; zero: never).
	Expiry time.Time
}

// Change is everything one write did to the watched keys of one partition:
// one key for a put or delete, several for a transaction or an expiry
// sweep. Version is the write's Raft index in that partition.
type Change struct {
	Partition int
	Version   uint64
	Events    []Event
}

// Cursor is where a watch stands: for each partition, the next version it
// will deliver. Versions are Raft indexes and mean nothing across
// partitions, so a position in a map is one version per partition. Pass a
// Watcher's Cursor to WatchFrom to resume exactly where it stopped.
type Cursor map[int]uint64

// Watcher streams the changes of a map (or of the keys under a prefix).
//
// Guarantees: within one partition — so for any one key — every change is
// delivered once, in version (Raft log) order, with no gap, across leader
// changes, node crashes and reconnects: the watcher resumes each
// partition's stream on another replica from the version after the last it
// delivered. Only committed writes are delivered. Changes of different
// partitions are interleaved in no particular order; keys that must be
// ordered together should share a {hash tag} (then a watch on a prefix
// that contains the whole tag reads just that one partition).
//
// A partition keeps a bounded history (node flag --watch-history); a watch
// that asks for, or falls behind to, a version older than that fails with
// ErrCompacted, and Next returns a *CompactedError naming the oldest
// version retained: read the current state again and watch from there.
//
// A Watcher is used by one goroutine at a time; Cursor and Close may be
// called from any.
type Watcher struct {
	c      *Client
	cancel context.CancelFunc
	wg     sync.WaitGroup
	items  chan watchItem

	mu     sync.Mutex
	cursor Cursor
	err    error // terminal
}

// watchItem is what a partition's stream hands to Next: a change, a
// progress mark, or a terminal error.
type watchItem struct {
	part     int
	change   *Change
	progress uint64
	err      error
}

// Watch streams every change to keys of mapName starting with prefix (every
// key, if prefix is empty), from fromVersion in every watched partition.
// fromVersion 0 means from now: Watch returns once each partition has said
// where that is (failing if one finds no replica within 15 s), so every
// write acknowledged after Watch returns is delivered. Since versions are
// per partition, a non-zero fromVersion is mostly useful when the prefix
// pins one partition with a hash tag; to resume a watch over several
// partitions, use WatchFrom with a Cursor. The watch runs until ctx ends
// or Close is called.
func (c *Client) Watch(ctx context.Context, mapName string, prefix []byte, fromVersion uint64) (*Watcher, error) {
	from := Cursor{}
	for _, p := range c.watchPartitions(mapName, prefix) {
		from[p] = fromVersion
	}
	return c.WatchFrom(ctx, mapName, prefix, from)
}

// WatchFrom is Watch resuming from a Cursor (a partition it does not name
// starts from now).
func (c *Client) WatchFrom(ctx context.Context, mapName string, prefix []byte, from Cursor) (*Watcher, error) {
	if err := grid.ValidateMapName(mapName); err != nil {
		return nil, err
	}
	if len(prefix) > c.opts.limits.MaxKeyBytes {
		return nil, fmt.Errorf("%w: prefix of %d bytes, limit %d", grid.ErrKeyTooLarge, len(prefix), c.opts.limits.MaxKeyBytes)
	}
	parts := c.watchPartitions(mapName, prefix)
	n := c.numPartitions()
	for p := range from {
		if p < 0 || p >= n {
			return nil, fmt.Errorf("%w: cursor names partition %d (the cluster has %d)", grid.ErrBadPartition, p, n)
		}
	}
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return nil, grid.ErrClosed
	}
	ctx, cancel := context.WithCancel(ctx)
	w := &Watcher{c: c, cancel: cancel, items: make(chan watchItem, 64), cursor: Cursor{}}
	for _, p := range parts {
		w.cursor[p] = from[p] // before any stream starts: they write it under w.mu
	}
	var starting []chan struct{}
	for _, p := range parts {
		ch := make(chan struct{})
		starting = append(starting, ch)
		var once sync.Once
		started := func(next uint64) {
			once.Do(func() {
				w.mu.Lock()
				if w.cursor[p] == 0 {
					w.cursor[p] = next
				}
				w.mu.Unlock()
				close(ch)
			})
		}
		if from[p] != 0 {
			started(0)
		}
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			defer started(0) // a stream that ends for good starts nothing
			w.follow(ctx, mapName, prefix, p, from[p], started)
		}()
	}
	// Wait until each partition watched "from now" has said where now is,
	// so that every write acknowledged after Watch returns is delivered.
	timer := time.NewTimer(watchStartTimeout)
	defer timer.Stop()
	for _, ch := range starting {
		select {
		case <-ch:
		case <-ctx.Done():
			err := ctx.Err()
			w.Close()
			return nil, fmt.Errorf("client: watch %s: %w", mapName, err)
		case <-timer.C:
			w.Close()
			return nil, fmt.Errorf("client: watch %s: a partition found no replica to start from within %v: %w",
				mapName, watchStartTimeout, context.DeadlineExceeded)
		}
	}
	return w, nil
}

// watchStartTimeout bounds how long Watch waits for the partitions it
// watches from now to report their position.
const watchStartTimeout = 15 * time.Second

// Watch is Client.Watch on this map.
func (m *Map) Watch(ctx context.Context, prefix []byte, fromVersion uint64) (*Watcher, error) {
	return m.c.Watch(ctx, m.name, prefix, fromVersion)
}

// WatchFrom is Client.WatchFrom on this map.
func (m *Map) WatchFrom(ctx context.Context, prefix []byte, from Cursor) (*Watcher, error) {
	return m.c.WatchFrom(ctx, m.name, prefix, from)
}

// watchPartitions lists the partitions a watch reads: the one a complete
// {hash tag} in the prefix pins (every key starting with the prefix has
// that tag first), else all of them.
func (c *Client) watchPartitions(mapName string, prefix []byte) []int {
	n := c.numPartitions()
	if len(grid.PartitionKey(prefix)) < len(prefix) { // a complete tag
		return []int{grid.PartitionOf(mapName, prefix, n)}
	}
	parts := make([]int, n)
	for i := range parts {
		parts[i] = i
	}
	return parts
}

// Next waits for the next change. After an error that ends the watch (the
// watch was closed, its context ended, a partition's history was
// compacted, the map does not exist) every later call returns it too.
func (w *Watcher) Next(ctx context.Context) (Change, error) {
	for {
		w.mu.Lock()
		err := w.err
		w.mu.Unlock()
		if err != nil {
			return Change{}, err
		}
		var it watchItem
		select {
		case <-ctx.Done():
			return Change{}, ctx.Err()
		case it = <-w.items:
		}
		w.mu.Lock()
		switch {
		case it.err != nil:
			if w.err == nil {
				w.err = it.err
				w.cancel() // the watch is over: stop every partition's stream
			}
		case it.change != nil:
			w.cursor[it.part] = it.change.Version + 1
		default:
			w.cursor[it.part] = max(w.cursor[it.part], it.progress+1)
		}
		w.mu.Unlock()
		if it.change != nil {
			return *it.change, nil
		}
	}
}

// Cursor returns the position after the last change Next returned (and
// after every change of the partition the watch has been told it can
// skip), to resume with WatchFrom.
func (w *Watcher) Cursor() Cursor {
	w.mu.Lock()
	defer w.mu.Unlock()
	return maps.Clone(w.cursor)
}

// Close stops the watch and waits for its streams to end.
func (w *Watcher) Close() error {
	w.cancel()
	w.wg.Wait()
	w.mu.Lock()
	if w.err == nil {
		w.err = fmt.Errorf("client: watch: %w", grid.ErrClosed)
	}
	w.mu.Unlock()
	return nil
}

// follow keeps one partition's stream going: any replica will do, the
// cached leader first; after an error it resumes from the version after
// the last it received, on another replica after a pause.
func (w *Watcher) follow(ctx context.Context, mapName string, prefix []byte, part int, next uint64, started func(next uint64)) {
	c := w.c
	pk := c.newPicker(part, true)
	pause := c.opts.retry.BaseBackoff
	maxPause := max(c.opts.retry.MaxBackoff, time.Second)
	deliver := func(it watchItem) bool {
		it.part = part
		select {
		case w.items <- it:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for ctx.Err() == nil {
		t, newRound, ok := pk.next()
		if ok && newRound {
			c.refreshTable(ctx)
			t, _, ok = pk.next()
		}
		var err error
		if !ok {
			err = fmt.Errorf("no node known for partition %d: %w", part, grid.ErrPartitionNotHere)
		} else {
			var got bool
			got, err = w.stream(ctx, t, &gridpb.WatchRequest{Map: mapName, Prefix: prefix, Partition: uint32(part)}, &next, deliver, started)
			if got {
				pause = c.opts.retry.BaseBackoff
			}
			pk.avoid[t.addr] = true
		}
		if ctx.Err() != nil {
			return
		}
		if watchFatal(err) {
			deliver(watchItem{err: fmt.Errorf("client: watch partition %d: %w", part, err)})
			return
		}
		c.log.Debug("client: watch stream broke; resuming", "partition", part, "from", next, "node", t.addr, "err", err)
		if errors.Is(err, grid.ErrPartitionNotHere) {
			c.refreshTable(ctx)
		}
		if sleep(ctx, jitter(pause)) != nil {
			return
		}
		pause = min(2*pause, maxPause)
	}
}

// stream runs one Watch stream from *next until it fails, advancing *next
// past every change and progress mark it delivers, and calling started
// after the first response. got reports that the stream delivered anything.
func (w *Watcher) stream(ctx context.Context, t target, req *gridpb.WatchRequest, next *uint64, deliver func(watchItem) bool, started func(uint64)) (got bool, err error) {
	cc, err := w.c.conn(t.addr)
	if err != nil {
		return false, err
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req.FromVersion = *next
	st, err := gridpb.NewWatchClient(cc).Watch(sctx, req)
	if err != nil {
		return false, gridpb.FromStatus(err)
	}
	for {
		resp, err := st.Recv()
		if err != nil {
			return got, gridpb.FromStatus(err)
		}
		got = true
		for _, ch := range resp.GetChanges() {
			if ch.GetVersion() < *next {
				continue // already delivered (a replica resending)
			}
			out := &Change{Partition: int(req.Partition), Version: ch.GetVersion()}
			for _, e := range ch.GetEvents() {
				if e.GetType() == gridpb.WatchEvent_PUT {
					if err := verifyValue(e.GetMap(), e.GetKey(), e.GetValue(), e.GetCrc(), t.addr); err != nil {
						return got, err
					}
				}
				out.Events = append(out.Events, Event{
					Type: EventType(e.GetType()), Key: e.GetKey(), Value: e.GetValue(), Expiry: expiryTime(e.GetExpiry()),
				})
			}
			if !deliver(watchItem{change: out}) {
				return got, ctx.Err()
			}
			*next = ch.GetVersion() + 1
		}
		if p := resp.GetProgressVersion(); p+1 > *next {
			if !deliver(watchItem{progress: p}) {
				return got, ctx.Err()
			}
			*next = p + 1
		}
		started(*next)
	}
}

// watchFatal tells the errors that end a watch from those it rides out
// (node crashes, leader changes, moves: anything a replica may not say
// again).
func watchFatal(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, grid.ErrCompacted) || errors.Is(err, grid.ErrUnknownMap) || errors.Is(err, grid.ErrInvalidMapName) ||
		errors.Is(err, grid.ErrBadRequest) || errors.Is(err, grid.ErrKeyTooLarge) || errors.Is(err, grid.ErrBadPartition) {
		return true
	}
	if errors.Is(err, grid.ErrClosed) {
		var se interface{ GRPCStatus() *status.Status }
		return !errors.As(err, &se) // the client closed, not a node shutting down
	}
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		switch se.GRPCStatus().Code() {
		case codes.InvalidArgument, codes.OutOfRange, codes.PermissionDenied, codes.Unimplemented:
			return true
		}
	}
	return false
}
