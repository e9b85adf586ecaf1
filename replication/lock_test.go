package replication

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// lockSM is one data partition's state machine over a real engine, driven
// by hand: each apply is a committed log entry at the next index, with the
// leader time the test chooses.
type lockSM struct {
	t     *testing.T
	eng   Engine
	sm    *stateMachine
	index uint64
}

func newLockSM(t *testing.T) *lockSM {
	t.Helper()
	eng, err := OpenEngine(EngineConfig{Dir: t.TempDir(), Profile: "small", SyncWrites: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	app, err := newKVApplier(GroupID(3), eng, WatchRetention{}, newChecks(), &corruption{})
	if err != nil {
		t.Fatal(err)
	}
	sm, err := newStateMachine(GroupID(3), eng, app, slog.New(slog.DiscardHandler),
		func(err error) { t.Errorf("fatal: %v", err) })
	if err != nil {
		t.Fatal(err)
	}
	return &lockSM{t: t, eng: eng, sm: sm, index: sm.Applied()}
}

// apply commits cmd at the next index, at leader time now (seconds), and
// returns the result; a deterministic refusal comes back as Result.Error.
func (l *lockSM) apply(now float64, cmd *gridpb.Command) *gridpb.Result {
	l.t.Helper()
	l.index += 7 // indexes need not be dense: no-ops and barriers skip the FSM
	cmd.LeaderTime = int64(now * float64(time.Second))
	data, err := proto.Marshal(cmd)
	if err != nil {
		l.t.Fatal(err)
	}
	ar := l.sm.Apply(&raft.Log{Index: l.index, Type: raft.LogCommand, Data: data}).(applyResult)
	if ar.err != nil {
		l.t.Fatalf("apply at %d: %v", l.index, ar.err)
	}
	return ar.res
}

var (
	ownerA = []byte("owner-a-16-bytes")
	ownerB = []byte("owner-b-16-bytes")
)

const lockTTL = int64(2 * time.Second)

func acquire(name string, owner []byte) *gridpb.Command {
	return &gridpb.Command{Op: &gridpb.Command_LockAcquire{LockAcquire: &gridpb.LockAcquireOp{Name: name, Owner: owner, TtlNs: lockTTL}}}
}

func renew(name string, owner []byte, token uint64) *gridpb.Command {
	return &gridpb.Command{Op: &gridpb.Command_LockRenew{LockRenew: &gridpb.LockRenewOp{Name: name, Owner: owner, Token: token}}}
}

func release(name string, owner []byte, token uint64) *gridpb.Command {
	return &gridpb.Command{Op: &gridpb.Command_LockRelease{LockRelease: &gridpb.LockReleaseOp{Name: name, Owner: owner, Token: token}}}
}

func fencedPut(key, value, fence string, token uint64) *gridpb.Command {
	return &gridpb.Command{Op: &gridpb.Command_Put{Put: &gridpb.PutOp{Map: "m", Key: []byte(key), Value: []byte(value),
		Fence: &gridpb.Fence{Name: fence, Token: token}}}}
}

// get reads a data key straight from the engine ("" if absent).
func (l *lockSM) get(key string) (string, uint64) {
	l.t.Helper()
	raw, err := l.eng.Get(dataKey(GroupID(3), "m", []byte(key)))
	if errors.Is(err, ErrEngineNotFound) {
		return "", 0
	}
	if err != nil {
		l.t.Fatal(err)
	}
	e, err := decodeEntry(raw)
	if err != nil {
		l.t.Fatal(err)
	}
	return string(e.Value), e.Version
}

func TestLockAcquireRenewExpireRelease(t *testing.T) {
	l := newLockSM(t)

	// A free lock is granted; its token is the index of the granting entry.
	r := l.apply(10, acquire("job", ownerA))
	if !r.Ok || r.Version != l.index || r.LeaseExpiry != int64(12*time.Second) {
		t.Fatalf("first acquire: %v (index %d)", r, l.index)
	}
	tokA := r.Version

	// Held: another owner is refused and told the holder's token and lease end.
	r = l.apply(11, acquire("job", ownerB))
	if r.Ok || r.Version != tokA || r.LeaseExpiry != int64(12*time.Second) {
		t.Fatalf("acquire while held: %v", r)
	}
	// The holder asking again (a retry) keeps its token, lease extended.
	r = l.apply(11.5, acquire("job", ownerA))
	if !r.Ok || r.Version != tokA || r.LeaseExpiry != int64(13.5*float64(time.Second)) {
		t.Fatalf("re-acquire by holder: %v", r)
	}
	// Renew extends the lease by the ttl from the renewal's leader time.
	r = l.apply(13, renew("job", ownerA, tokA))
	if !r.Ok || r.LeaseExpiry != int64(15*time.Second) {
		t.Fatalf("renew: %v", r)
	}
	// Renewals by someone else, or with another token, are refused.
	for _, c := range []*gridpb.Command{renew("job", ownerB, tokA), renew("job", ownerA, tokA+1), release("job", ownerB, tokA)} {
		if r := l.apply(13.1, c); r.Error != resLockNotHeld {
			t.Fatalf("%v: %v, want %s", c, r, resLockNotHeld)
		}
	}
	// Still held just before the lease ends (by leader time) ...
	if r := l.apply(14.999, acquire("job", ownerB)); r.Ok {
		t.Fatalf("acquired before the lease ended: %v", r)
	}
	// ... expired at its end: the holder cannot renew, another owner gets
	// a higher token.
	if r := l.apply(15, renew("job", ownerA, tokA)); r.Error != resLockNotHeld {
		t.Fatalf("renew after expiry: %v", r)
	}
	r = l.apply(15, acquire("job", ownerB))
	if !r.Ok || r.Version <= tokA {
		t.Fatalf("acquire after expiry: %v (old token %d)", r, tokA)
	}
	tokB := r.Version
	// The expired holder's release is refused and changes nothing.
	if r := l.apply(15.5, release("job", ownerA, tokA)); r.Error != resLockNotHeld {
		t.Fatalf("stale release: %v", r)
	}
	if r := l.apply(15.6, acquire("job", ownerA)); r.Ok || r.Version != tokB {
		t.Fatalf("lock changed hands after a stale release: %v", r)
	}
	// Release frees it at once; the next grant has a higher token.
	if r := l.apply(16, release("job", ownerB, tokB)); !r.Ok {
		t.Fatalf("release: %v", r)
	}
	if r := l.apply(16, release("job", ownerB, tokB)); r.Error != resLockNotHeld {
		t.Fatalf("second release: %v", r)
	}
	r = l.apply(16.1, acquire("job", ownerA))
	if !r.Ok || r.Version <= tokB {
		t.Fatalf("acquire after release: %v (previous token %d)", r, tokB)
	}
	// Other locks are independent.
	if r := l.apply(16.2, acquire("other", ownerB)); !r.Ok {
		t.Fatalf("independent lock: %v", r)
	}
	// Malformed commands change nothing.
	for _, c := range []*gridpb.Command{acquire("", ownerA), acquire("x", nil), renew("", ownerA, 1),
		{Op: &gridpb.Command_LockAcquire{LockAcquire: &gridpb.LockAcquireOp{Name: "x", Owner: ownerA, TtlNs: -1}}}} {
		if r := l.apply(17, c); r.Error != resBadLock {
			t.Fatalf("%v: %v, want %s", c, r, resBadLock)
		}
	}
	if _, err := l.eng.Get(lockKey(GroupID(3), "x")); !errors.Is(err, ErrEngineNotFound) {
		t.Fatalf("malformed acquire left a record: %v", err)
	}
}

func TestLockFencedWrites(t *testing.T) {
	l := newLockSM(t)
	if r := l.apply(1, fencedPut("k", "v10", "res", 10)); !r.Ok {
		t.Fatalf("first fenced write: %v", r)
	}
	// The same token again, then a higher one, are accepted.
	if r := l.apply(1, fencedPut("k", "v10b", "res", 10)); !r.Ok {
		t.Fatalf("same token: %v", r)
	}
	if r := l.apply(1, fencedPut("k", "v12", "res", 12)); !r.Ok {
		t.Fatalf("higher token: %v", r)
	}
	_, ver := l.get("k")
	// A lower token is refused with the accepted one, and nothing changes:
	// neither the key (also not a key never written) nor the fence.
	for _, c := range []*gridpb.Command{fencedPut("k", "evil", "res", 11), fencedPut("new", "evil", "res", 1)} {
		if r := l.apply(1, c); r.Error != resStaleToken || r.Version != 12 {
			t.Fatalf("stale token: %v", r)
		}
	}
	if v, ver2 := l.get("k"); v != "v12" || ver2 != ver {
		t.Fatalf("after a refused write: %q version %d, want v12 version %d", v, ver2, ver)
	}
	if v, _ := l.get("new"); v != "" {
		t.Fatalf("refused write created a key: %q", v)
	}
	raw, err := l.eng.Get(fenceKey(GroupID(3), "res"))
	if err != nil || binary.BigEndian.Uint64(raw) != 12 {
		t.Fatalf("fence after refusal: %x %v", raw, err)
	}
	// Fences are per name; unfenced writes are not checked.
	if r := l.apply(1, fencedPut("k2", "x", "other", 1)); !r.Ok {
		t.Fatalf("other fence: %v", r)
	}
	if r := l.apply(1, &gridpb.Command{Op: &gridpb.Command_Put{Put: &gridpb.PutOp{Map: "m", Key: []byte("k"), Value: []byte("unfenced")}}}); !r.Ok {
		t.Fatalf("unfenced: %v", r)
	}
	// Token 0 is malformed.
	if r := l.apply(1, fencedPut("k", "x", "res", 0)); r.Error != resBadLock {
		t.Fatalf("token 0: %v", r)
	}
	// A refused write retried with the same request id is refused again
	// (deduplicated), even after the fence moved on.
	cmd := fencedPut("k", "late", "res", 5)
	cmd.ClientId, cmd.Seq = 9, 1
	if r := l.apply(1, cmd); r.Error != resStaleToken {
		t.Fatalf("stale with id: %v", r)
	}
	cmd = fencedPut("k", "late", "res", 5)
	cmd.ClientId, cmd.Seq = 9, 1
	if r := l.apply(1, cmd); r.Error != resStaleToken {
		t.Fatalf("stale retry: %v", r)
	}
}

// snapshotSink collects a snapshot in memory.
type snapshotSink struct{ bytes.Buffer }

func (s *snapshotSink) ID() string    { return "mem" }
func (s *snapshotSink) Cancel() error { return nil }
func (s *snapshotSink) Close() error  { return nil }

// A snapshot carries lock records and fences: after a restore on another
// replica, the holder is still the holder, tokens keep growing, and stale
// fenced writes are still refused.
func TestLockSnapshotRestore(t *testing.T) {
	src := newLockSM(t)
	tok := src.apply(1, acquire("job", ownerA)).Version
	tok2 := src.apply(1, acquire("job2", ownerA)).Version
	src.apply(1, release("job2", ownerA, tok2))
	src.apply(1, fencedPut("k", "v", "job", tok))

	snap, err := src.sm.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink snapshotSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	snap.Release()

	dst := newLockSM(t)
	if err := dst.sm.Restore(io.NopCloser(&sink)); err != nil {
		t.Fatal(err)
	}
	dst.index = dst.sm.Applied()
	if dst.index != src.index {
		t.Fatalf("restored applied index %d, want %d", dst.index, src.index)
	}
	if r := dst.apply(1.5, acquire("job", ownerB)); r.Ok || r.Version != tok {
		t.Fatalf("holder lost in restore: %v", r)
	}
	if r := dst.apply(1.5, renew("job", ownerA, tok)); !r.Ok {
		t.Fatalf("renew after restore: %v", r)
	}
	if r := dst.apply(5, acquire("job", ownerB)); !r.Ok || r.Version <= tok {
		t.Fatalf("acquire after restore and expiry: %v (old token %d)", r, tok)
	}
	if r := dst.apply(5, acquire("job2", ownerB)); !r.Ok || r.Version <= tok2 {
		t.Fatalf("released lock after restore: %v (old token %d)", r, tok2)
	}
	if r := dst.apply(5, fencedPut("k", "stale", "job", tok-1)); r.Error != resStaleToken {
		t.Fatalf("stale fence after restore: %v", r)
	}
}

// TestLockFencedDeleteCASTxn: a stale token refuses a delete, a CAS (even
// one whose version matches) and a whole transaction, changing nothing; a
// current token lets each through.
func TestLockFencedDeleteCASTxn(t *testing.T) {
	l := newLockSM(t)
	if r := l.apply(1, fencedPut("k", "v", "res", 10)); !r.Ok {
		t.Fatalf("fenced write: %v", r)
	}
	_, ver := l.get("k")
	stale := &gridpb.Fence{Name: "res", Token: 9}
	for name, cmd := range map[string]*gridpb.Command{
		"delete":     {Op: &gridpb.Command_Delete{Delete: &gridpb.DeleteOp{Map: "m", Key: []byte("k"), Fence: stale}}},
		"cas":        {Op: &gridpb.Command_Cas{Cas: &gridpb.CasOp{Map: "m", Key: []byte("k"), ExpectedVersion: ver, Value: []byte("evil"), Fence: stale}}},
		"cas delete": {Op: &gridpb.Command_Cas{Cas: &gridpb.CasOp{Map: "m", Key: []byte("k"), ExpectedVersion: ver, Delete: true, Fence: stale}}},
		"txn": {Op: &gridpb.Command_Txn{Txn: &gridpb.TxnOp{Map: "m", Fence: stale,
			ThenOps: []*gridpb.TxnWrite{{Key: []byte("k"), Value: []byte("evil")}},
			ElseOps: []*gridpb.TxnWrite{{Key: []byte("k2"), Value: []byte("evil")}}}}},
	} {
		if r := l.apply(1, cmd); r.Error != resStaleToken || r.Version != 10 {
			t.Fatalf("%s with a stale token: %v", name, r)
		}
		if v, ver2 := l.get("k"); v != "v" || ver2 != ver {
			t.Fatalf("%s with a stale token changed k: %q version %d", name, v, ver2)
		}
		if v, _ := l.get("k2"); v != "" {
			t.Fatalf("%s with a stale token wrote k2: %q", name, v)
		}
	}
	cur := &gridpb.Fence{Name: "res", Token: 11}
	if r := l.apply(1, &gridpb.Command{Op: &gridpb.Command_Cas{Cas: &gridpb.CasOp{Map: "m", Key: []byte("k"), ExpectedVersion: ver, Value: []byte("v11"), Fence: cur}}}); !r.Ok {
		t.Fatalf("cas with a current token: %v", r)
	}
	if r := l.apply(1, &gridpb.Command{Op: &gridpb.Command_Txn{Txn: &gridpb.TxnOp{Map: "m", Fence: cur,
		ThenOps: []*gridpb.TxnWrite{{Key: []byte("k2"), Value: []byte("t")}}}}}); !r.Ok {
		t.Fatalf("txn with a current token: %v", r)
	}
	if r := l.apply(1, &gridpb.Command{Op: &gridpb.Command_Delete{Delete: &gridpb.DeleteOp{Map: "m", Key: []byte("k"), Fence: &gridpb.Fence{Name: "res", Token: 12}}}}); !r.Ok || !r.Existed {
		t.Fatalf("delete with a current token: %v", r)
	}
	if v, _ := l.get("k"); v != "" {
		t.Fatalf("k after fenced delete: %q", v)
	}
	// The fence moved to 12: token 11 is now stale for every kind of write.
	if r := l.apply(1, fencedPut("k", "late", "res", 11)); r.Error != resStaleToken {
		t.Fatalf("put after the fence moved: %v", r)
	}
}
