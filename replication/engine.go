package replication

import (
	"context"
	"errors"
)

// ErrEngineNotFound is returned by point reads of a missing key.
var ErrEngineNotFound = errors.New("replication: engine key not found")

// Engine is the node's one storage engine, shared by every partition (keys
// carry a partition prefix). It is what the state machines need and no more.
//
// Thread contract: Write, DropPrefix and Sync may be called concurrently from
// different partitions' apply goroutines; the engine serialises as it must.
// Views are independent of each other and of writes.
type Engine interface {
	// Write applies every op of the batch atomically: after a crash either
	// all of them are visible or none is. The state machines put their
	// applied index into the same batch. A batch larger than MaxBatchBytes
	// is refused with ErrBatchTooLarge (callers split it).
	Write(ctx context.Context, b *Batch) error
	// Get reads the latest committed value of key, or ErrEngineNotFound.
	// The returned slice is owned by the caller.
	Get(key []byte) ([]byte, error)
	// NewView opens a consistent read-only snapshot. It must be closed.
	NewView() (View, error)
	// DropPrefix deletes every key starting with prefix (durably, atomically
	// as far as the engine allows: callers mark the operation so an
	// interrupted drop is detected and redone).
	DropPrefix(ctx context.Context, prefix []byte) error
	// Sync makes every write so far durable on disk.
	Sync() error
	// Stats reports sizes for status and metrics.
	Stats() EngineStats
	// Verify checks the engine's own on-disk checksums (table blocks for
	// badger, page consistency for bbolt) and reports the first problem.
	Verify(ctx context.Context) error
	// MaxBatchBytes is the largest batch Write accepts.
	MaxBatchBytes() int
	// Close flushes and releases the engine.
	Close() error
}

// ErrBatchTooLarge is returned by Write when a batch exceeds MaxBatchBytes.
var ErrBatchTooLarge = errors.New("replication: engine batch too large")

// View is a consistent, read-only snapshot of the engine.
type View interface {
	// Get reads key as of the view, or ErrEngineNotFound. The returned
	// slice is valid until the view is closed.
	Get(key []byte) ([]byte, error)
	// Iterate calls fn for every key with the given prefix that is strictly
	// greater than after (nil: from the first), in ascending key order, until
	// fn returns false or an error. k and v are valid only during the call.
	Iterate(prefix, after []byte, fn func(k, v []byte) (bool, error)) error
	// Close releases the snapshot.
	Close()
}

// EngineStats are engine-wide size figures.
type EngineStats struct {
	Kind      string // "badger" or "bbolt"
	DiskBytes int64
}

// Batch is an ordered list of sets and deletes applied atomically.
type Batch struct {
	Ops  []Op
	size int
}

// Op is one change: Delete true removes Key; otherwise Key is set to Value.
type Op struct {
	Key    []byte
	Value  []byte
	Delete bool
}

// Set appends a set of key to value.
func (b *Batch) Set(key, value []byte) {
	b.Ops = append(b.Ops, Op{Key: key, Value: value})
	b.size += len(key) + len(value) + opOverhead
}

// Del appends a delete of key.
func (b *Batch) Del(key []byte) {
	b.Ops = append(b.Ops, Op{Key: key, Delete: true})
	b.size += len(key) + opOverhead
}

// Size estimates the batch's size in bytes, as engines count it.
func (b *Batch) Size() int { return b.size }

// Len is the number of ops.
func (b *Batch) Len() int { return len(b.Ops) }

// Reset empties the batch for reuse.
func (b *Batch) Reset() {
	b.Ops = b.Ops[:0]
	b.size = 0
}

// opOverhead approximates an engine's per-entry bookkeeping. badger also
// caps the op count of a transaction (15% of the memtable / ~96 bytes per
// skiplist node); counting 100 bytes per op makes every batch within
// MaxBatchBytes also fit that count, so callers split by Size alone.
const opOverhead = 100

// EngineConfig selects and sizes the engine.
type EngineConfig struct {
	// Dir is the engine's directory.
	Dir string
	// Kind is "badger", "bbolt" or "" for the platform default (bbolt on
	// 32-bit ARM, where badger must not run; badger elsewhere).
	Kind string
	// Profile is "small" (default: low memory, for 512 MB machines) or "default".
	Profile string
	// SyncWrites makes every Write durable before it returns. The state
	// machines can run without it because the Raft log is the source of
	// truth and replay is idempotent; tests keep it on.
	SyncWrites bool
}
