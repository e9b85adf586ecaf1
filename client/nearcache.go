package client

import (
	"container/list"
	"context"
	"fmt"
	"sync"
	"time"
)

// NearCacheOptions bound a NearCache.
type NearCacheOptions struct {
	// MaxEntries and MaxBytes bound what the cache holds (keys plus
	// values); the least recently read entries go first. Zero: 10000
	// entries, 64 MiB.
	MaxEntries int
	MaxBytes   int64
	// MaxStaleness is the most a value served from the cache may lag the
	// cluster: an entry is read again linearizably once it is this old,
	// whatever the change stream says. Zero: one second.
	MaxStaleness time.Duration
}

// NearCache is an opt-in cache, in the client, of one map's values: a read
// that finds its key cached is answered without a round trip. It is kept
// fresh by the map's change stream (a Watcher started with the cache):
// a change to a cached key drops it as soon as the change arrives. Writes
// made through the cache drop their key before and after they are sent,
// so a client reads its own writes. Every entry also expires MaxStaleness
// after the linearizable read that filled it began, so a change stream
// that lags or silently stops can never make the cache serve a value
// overwritten longer ago than that; a change stream that fails drops the
// whole cache and starts a new one.
//
// Reads through the cache are therefore not linearizable: GetCached says
// whether a value came from the cache and how old it may be. Methods are
// safe for concurrent use.
type NearCache struct {
	m    *Map
	opts NearCacheOptions

	mu    sync.Mutex
	lru   *list.List               // of *nearEntry, most recently read first
	byKey map[string]*list.Element // key → element of lru
	bytes int64
	// gen counts, per key, the invalidations that may still race a fill
	// (writes through the cache, changes from the stream); a fill whose
	// key's count moved since it began is not stored. Counts are dropped
	// with the cache (clear) and bounded by the keys written or changed
	// since.
	gen    map[string]uint64
	epoch  uint64 // bumped by clear: fills begun before it are not stored
	closed bool   // after Close every read goes to the cluster
	stats  NearCacheStats

	cancel context.CancelFunc
	done   chan struct{}
}

type nearEntry struct {
	key     string
	value   []byte
	version uint64
	filled  time.Time // when the read that filled it began
}

// NearCacheStats counts what a NearCache did.
type NearCacheStats struct {
	Hits, Misses int64
	// Invalidations: entries dropped because their key changed (stream
	// or own write); Expired: entries read again for being too old;
	// Evicted: dropped for room; Resets: whole-cache drops after the
	// change stream failed.
	Invalidations, Expired, Evicted, Resets int64
	Entries                                 int
	Bytes                                   int64
}

// ReadInfo says where a value read through a NearCache came from.
type ReadInfo struct {
	// Cached: answered from the cache. Age is then how long ago the
	// linearizable read that filled the entry began: the value was
	// current at some moment since, and any change to the key after that
	// moment would have dropped it once the change stream delivered it.
	Cached bool
	Age    time.Duration
	// Version is the Raft index of the write that set the value.
	Version uint64
}

// NearCache starts a cache of this map's values, fed by a change stream
// of the whole map; Close stops it. The stream is running (every write
// acknowledged after NearCache returns reaches the cache) before it
// returns.
func (m *Map) NearCache(ctx context.Context, opts NearCacheOptions) (*NearCache, error) {
	if opts.MaxEntries < 0 || opts.MaxBytes < 0 || opts.MaxStaleness < 0 {
		return nil, fmt.Errorf("client: near cache: negative bound in %+v", opts)
	}
	if opts.MaxEntries == 0 {
		opts.MaxEntries = 10000
	}
	if opts.MaxBytes == 0 {
		opts.MaxBytes = 64 << 20
	}
	if opts.MaxStaleness == 0 {
		opts.MaxStaleness = time.Second
	}
	w, err := m.Watch(ctx, nil, 0)
	if err != nil {
		return nil, fmt.Errorf("client: near cache of %s: %w", m.name, err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	nc := &NearCache{m: m, opts: opts, lru: list.New(), byKey: map[string]*list.Element{}, gen: map[string]uint64{},
		cancel: cancel, done: make(chan struct{})}
	go nc.follow(runCtx, w)
	return nc, nil
}

// follow applies the change stream to the cache until ctx ends; when the
// stream fails it drops the cache and watches again from now.
func (nc *NearCache) follow(ctx context.Context, w *Watcher) {
	defer close(nc.done)
	for {
		for {
			ch, err := w.Next(ctx)
			if err != nil {
				break
			}
			nc.mu.Lock()
			for _, e := range ch.Events {
				nc.invalidateLocked(string(e.Key), ch.Version)
			}
			nc.mu.Unlock()
		}
		_ = w.Close()
		if ctx.Err() != nil {
			return
		}
		// The stream failed (its history was compacted, or it could not
		// resume): what it would have told us is lost, so nothing cached
		// can be trusted. Drop everything and follow a new stream.
		nc.mu.Lock()
		nc.clearLocked()
		nc.stats.Resets++
		nc.mu.Unlock()
		for {
			var err error
			if w, err = nc.m.Watch(ctx, nil, 0); err == nil {
				break
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		}
	}
}

// invalidateLocked drops key if the change at version is newer than what
// is cached (version 0: any), and stops fills of key in flight.
func (nc *NearCache) invalidateLocked(key string, version uint64) {
	nc.gen[key]++
	if el, ok := nc.byKey[key]; ok {
		if e := el.Value.(*nearEntry); version == 0 || version > e.version {
			nc.removeLocked(el)
			nc.stats.Invalidations++
		}
	}
}

func (nc *NearCache) removeLocked(el *list.Element) {
	e := nc.lru.Remove(el).(*nearEntry)
	delete(nc.byKey, e.key)
	nc.bytes -= int64(len(e.key) + len(e.value))
}

func (nc *NearCache) clearLocked() {
	nc.lru.Init()
	nc.byKey = map[string]*list.Element{}
	nc.gen = map[string]uint64{}
	nc.bytes = 0
	nc.epoch++
}

// Get reads key through the cache (see GetCached).
func (nc *NearCache) Get(ctx context.Context, key []byte) ([]byte, error) {
	v, _, err := nc.GetCached(ctx, key)
	return v, err
}

// GetCached answers from the cache when it holds key and the entry is
// younger than MaxStaleness; otherwise it reads linearizably and fills
// the cache (unless the key changed meanwhile). A missing key is
// ErrNotFound and is not cached.
func (nc *NearCache) GetCached(ctx context.Context, key []byte) ([]byte, ReadInfo, error) {
	k := string(key)
	now := time.Now()
	nc.mu.Lock()
	if el, ok := nc.byKey[k]; ok {
		e := el.Value.(*nearEntry)
		if age := now.Sub(e.filled); age < nc.opts.MaxStaleness {
			nc.lru.MoveToFront(el)
			nc.stats.Hits++
			v := e.value
			nc.mu.Unlock()
			return v, ReadInfo{Cached: true, Age: age, Version: e.version}, nil
		}
		nc.removeLocked(el)
		nc.stats.Expired++
	}
	nc.stats.Misses++
	gen, epoch := nc.gen[k], nc.epoch
	nc.mu.Unlock()

	value, version, err := nc.m.Get(ctx, key)
	if err != nil {
		return nil, ReadInfo{}, err
	}
	nc.mu.Lock()
	defer nc.mu.Unlock()
	if !nc.closed && nc.gen[k] == gen && nc.epoch == epoch && int64(len(k)+len(value)) <= nc.opts.MaxBytes {
		if el, ok := nc.byKey[k]; ok {
			nc.removeLocked(el)
		}
		nc.byKey[k] = nc.lru.PushFront(&nearEntry{key: k, value: value, version: version, filled: now})
		nc.bytes += int64(len(k) + len(value))
		for nc.lru.Len() > nc.opts.MaxEntries || nc.bytes > nc.opts.MaxBytes {
			nc.removeLocked(nc.lru.Back())
			nc.stats.Evicted++
		}
		if len(nc.gen) > 4*nc.opts.MaxEntries {
			// Counts of keys no fill waits on are only a guard for fills
			// in flight: forget them all, and with them every such fill.
			nc.gen = map[string]uint64{}
			nc.epoch++
		}
	}
	return value, ReadInfo{Version: version}, nil
}

// Put writes through to the map (Map.Put) and drops key from the cache
// before and after, so this client's next read sees the write.
func (nc *NearCache) Put(ctx context.Context, key, value []byte, opts ...WriteOption) (uint64, error) {
	nc.invalidate(key)
	defer nc.invalidate(key)
	return nc.m.Put(ctx, key, value, opts...)
}

// Delete deletes key from the map (Map.Delete) and from the cache.
func (nc *NearCache) Delete(ctx context.Context, key []byte, opts ...WriteOption) (bool, error) {
	nc.invalidate(key)
	defer nc.invalidate(key)
	return nc.m.Delete(ctx, key, opts...)
}

func (nc *NearCache) invalidate(key []byte) {
	nc.mu.Lock()
	defer nc.mu.Unlock()
	nc.invalidateLocked(string(key), 0)
}

// Stats returns the cache's counters.
func (nc *NearCache) Stats() NearCacheStats {
	nc.mu.Lock()
	defer nc.mu.Unlock()
	s := nc.stats
	s.Entries, s.Bytes = nc.lru.Len(), nc.bytes
	return s
}

// Close stops the change stream and empties the cache; reads through it
// then go to the cluster every time.
func (nc *NearCache) Close() error {
	nc.cancel()
	<-nc.done
	nc.mu.Lock()
	nc.clearLocked()
	nc.closed = true
	nc.mu.Unlock()
	return nil
}
