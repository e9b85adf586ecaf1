package replication

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// boltBucket holds every key: partitions are told apart by key prefix.
const boltBucket = "kv"

// DropPrefix deletes at most this much per transaction, so a large drop
// neither holds the writer lock for long nor dirties unbounded memory.
const (
	boltDropChunkKeys  = 10_000
	boltDropChunkBytes = 4 << 20
)

// boltProfile sizes bbolt for a profile.
type boltProfile struct {
	// initialMmap is mapped at open. bbolt remaps when the file outgrows its
	// mapping, and a remap waits for every open read transaction (View): a
	// long snapshot stream would stall the write that needs to grow the map.
	// Mapping ahead avoids that until the file reaches this size, but it
	// costs address space, of which a 32-bit process has little (~3 GB,
	// shared with the heap), so it stays modest.
	initialMmap int
	// maxBatch bounds one write transaction's dirty pages.
	maxBatch int
}

func boltProfileFor(name string) boltProfile {
	if name == engineProfileDefault {
		return boltProfile{initialMmap: 256 << 20, maxBatch: 8 << 20}
	}
	return boltProfile{initialMmap: 64 << 20, maxBatch: 4 << 20}
}

// boltEngine is the engine on 32-bit ARM: one bbolt file, one bucket.
type boltEngine struct {
	db       *bolt.DB
	path     string
	maxBatch int
	state    engineState
	// checkMu is held shared by writers and exclusively by Verify: tx.Check
	// on a read-only transaction is unsafe while a writer commits (it reads
	// the shared freelist), and running it in a write transaction instead
	// would cache every page of the file in memory.
	checkMu sync.RWMutex
}

func openBoltEngine(cfg EngineConfig) (*boltEngine, error) {
	prof := boltProfileFor(cfg.Profile)
	path := filepath.Join(cfg.Dir, boltFileName)
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		// Fail rather than hang when another process holds the file lock.
		Timeout: 5 * time.Second,
		// The freelist is rebuilt by a scan at open instead of rewritten on
		// every commit: cheaper writes for a slower start.
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
		// Always fsync: with NoSync a power cut can leave bbolt's meta page
		// pointing at pages never written, a corrupt file rather than a few
		// lost writes, and bbolt is the engine of the Pis that lose power.
		NoSync:          false,
		InitialMmapSize: prof.initialMmap,
	})
	if err != nil {
		return nil, fmt.Errorf("replication: open bbolt engine: %w", err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists([]byte(boltBucket))
		return err
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("replication: open bbolt engine: %w", err)
	}
	return &boltEngine{db: db, path: path, maxBatch: prof.maxBatch}, nil
}

func (e *boltEngine) Write(ctx context.Context, b *Batch) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := e.state.enter(); err != nil {
		return err
	}
	defer e.state.leave()
	if b == nil || len(b.Ops) == 0 {
		return nil
	}
	if _, err := checkBatch(b, e.maxBatch); err != nil {
		return err
	}
	e.checkMu.RLock()
	defer e.checkMu.RUnlock()
	err := e.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket([]byte(boltBucket))
		for i := range b.Ops {
			op := &b.Ops[i]
			var err error
			if op.Delete {
				err = bk.Delete(op.Key)
			} else {
				err = bk.Put(op.Key, op.Value)
			}
			if err != nil {
				return fmt.Errorf("op %d: %w", i, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("replication: bbolt write: %w", err)
	}
	return nil
}

func (e *boltEngine) Get(key []byte) ([]byte, error) {
	if err := e.state.enter(); err != nil {
		return nil, err
	}
	defer e.state.leave()
	var val []byte
	err := e.db.View(func(tx *bolt.Tx) error {
		v, ok := boltGet(tx.Bucket([]byte(boltBucket)), key)
		if !ok {
			return ErrEngineNotFound
		}
		val = append(make([]byte, 0, len(v)), v...)
		return nil
	})
	return val, err
}

// boltGet finds key with a cursor: Bucket.Get cannot tell an empty value
// from a missing key.
func boltGet(bk *bolt.Bucket, key []byte) ([]byte, bool) {
	if len(key) == 0 {
		return nil, false
	}
	k, v := bk.Cursor().Seek(key)
	if !bytes.Equal(k, key) {
		return nil, false
	}
	return v, true
}

// NewView opens a read-only bbolt transaction. Close it promptly: besides
// stalling mmap growth (see boltProfile), an open read transaction keeps
// the pages it sees from being reused, so the file grows meanwhile.
func (e *boltEngine) NewView() (View, error) {
	if err := e.state.enter(); err != nil {
		return nil, err
	}
	defer e.state.leave()
	tx, err := e.db.Begin(false)
	if err != nil {
		return nil, fmt.Errorf("replication: bbolt view: %w", err)
	}
	e.state.views.Add(1)
	return &boltView{tx: tx, bk: tx.Bucket([]byte(boltBucket)), state: &e.state}, nil
}

// DropPrefix deletes in bounded transactions, so it is not atomic: after a
// crash part of the prefix may remain (callers mark and redo the drop).
func (e *boltEngine) DropPrefix(ctx context.Context, prefix []byte) error {
	if len(prefix) == 0 {
		return fmt.Errorf("%w: empty prefix for DropPrefix", errEngineInvalidOp)
	}
	if err := e.state.enter(); err != nil {
		return err
	}
	defer e.state.leave()
	e.checkMu.RLock()
	defer e.checkMu.RUnlock()
	for done := false; !done; {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := e.db.Update(func(tx *bolt.Tx) error {
			c := tx.Bucket([]byte(boltBucket)).Cursor()
			keys, size := 0, 0
			// Seek again after each delete: Next after Delete skips a key.
			for k, v := c.Seek(prefix); ; k, v = c.Seek(prefix) {
				if k == nil || !bytes.HasPrefix(k, prefix) {
					done = true
					return nil
				}
				if keys >= boltDropChunkKeys || size >= boltDropChunkBytes {
					return nil
				}
				keys, size = keys+1, size+len(k)+len(v)
				if err := c.Delete(); err != nil {
					return err
				}
			}
		})
		if err != nil {
			return fmt.Errorf("replication: bbolt drop prefix: %w", err)
		}
	}
	return nil
}

func (e *boltEngine) Sync() error {
	if err := e.state.enter(); err != nil {
		return err
	}
	defer e.state.leave()
	if err := e.db.Sync(); err != nil {
		return fmt.Errorf("replication: bbolt sync: %w", err)
	}
	return nil
}

// Stats reports the file's size, which includes free pages and space bbolt
// allocated ahead.
func (e *boltEngine) Stats() EngineStats {
	st := EngineStats{Kind: engineKindBolt}
	if fi, err := os.Stat(e.path); err == nil {
		st.DiskBytes = fi.Size()
	}
	return st
}

// Verify runs bbolt's page consistency check. Writes wait while it runs.
func (e *boltEngine) Verify(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := e.state.enter(); err != nil {
		return err
	}
	defer e.state.leave()
	e.checkMu.Lock()
	defer e.checkMu.Unlock()
	tx, err := e.db.Begin(false)
	if err != nil {
		return fmt.Errorf("replication: bbolt verify: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	var first error
	// Drain the channel: the checker goroutine reads tx until it closes it.
	for err := range tx.Check() {
		if first == nil {
			first = fmt.Errorf("replication: bbolt verify: %w", err)
		}
	}
	return first
}

func (e *boltEngine) MaxBatchBytes() int { return e.maxBatch }

// Close fails while views are open; it is a no-op once closed.
func (e *boltEngine) Close() error {
	first, err := e.state.shut()
	if !first {
		return err
	}
	if err := e.db.Close(); err != nil {
		return fmt.Errorf("replication: close bbolt engine: %w", err)
	}
	return nil
}

// boltView is a read-only bbolt transaction. Like the transaction, it is for
// one goroutine at a time.
type boltView struct {
	tx     *bolt.Tx
	bk     *bolt.Bucket
	state  *engineState
	closed bool
}

// Get returns a slice of the read-only file mapping: writing to it faults.
func (v *boltView) Get(key []byte) ([]byte, error) {
	if v.closed {
		return nil, errViewClosed
	}
	val, ok := boltGet(v.bk, key)
	if !ok {
		return nil, ErrEngineNotFound
	}
	return val, nil
}

func (v *boltView) Iterate(prefix, after []byte, fn func(k, val []byte) (bool, error)) error {
	if v.closed {
		return errViewClosed
	}
	seek, skipEqual := iterSeek(prefix, after)
	c := v.bk.Cursor()
	var k, val []byte
	if len(seek) == 0 {
		k, val = c.First()
	} else {
		k, val = c.Seek(seek)
	}
	for ; k != nil && bytes.HasPrefix(k, prefix); k, val = c.Next() {
		if skipEqual && bytes.Equal(k, after) {
			continue
		}
		more, err := fn(k, val)
		if err != nil || !more {
			return err
		}
	}
	return nil
}

func (v *boltView) Close() {
	if v.closed {
		return
	}
	v.closed = true
	_ = v.tx.Rollback()
	v.state.views.Add(-1)
}
