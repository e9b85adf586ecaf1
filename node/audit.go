package node

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
	"github.com/zerogrid/zerogrid/grid/gridtls"
)

// auditMaxBytes is the size at which the log moves to audit.log.1 (one
// older generation is kept).
const auditMaxBytes = 16 << 20

// audit appends grid.AuditRecords to DataDir/audit.log, synced before the call
// is answered: membership changes, role-bearing operations (admin and
// compute), code submissions with their script's hash, backups,
// restores, quarantines, and every refused call.
type audit struct {
	node, path string

	mu   sync.Mutex
	f    *os.File
	size int64
}

func openAudit(node, dataDir string) (*audit, error) {
	a := &audit{node: node, path: filepath.Join(dataDir, "audit.log")}
	if err := a.open(); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *audit) open() error {
	f, err := os.OpenFile(a.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("node: audit log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("node: audit log: %w", err)
	}
	a.f, a.size = f, st.Size()
	return nil
}

// audited reports whether calls of method needing role are recorded when
// they succeed (refusals always are).
func audited(method, role string) bool {
	switch {
	case role == roleAdmin || role == roleCompute:
		return true
	case method == gridpb.Cluster_Membership_FullMethodName, method == gridpb.Integrity_Quarantine_FullMethodName,
		method == gridpb.Cluster_Join_FullMethodName, method == gridpb.Integrity_RecoverReplica_FullMethodName:
		return true
	}
	return false
}

// record writes r, synced when sync is set; a record that cannot be
// written is logged by the caller.
func (a *audit) record(r grid.AuditRecord, sync bool) error {
	line, err := json.Marshal(r)
	if err != nil {
		return err
	}
	line = append(line, '\n')
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.f == nil {
		return fmt.Errorf("node: audit log closed")
	}
	if a.size+int64(len(line)) > auditMaxBytes {
		a.f.Close()
		if err := os.Rename(a.path, a.path+".1"); err != nil {
			return fmt.Errorf("node: audit log: %w", err)
		}
		if err := a.open(); err != nil {
			a.f = nil
			return err
		}
	}
	n, err := a.f.Write(line)
	a.size += int64(n)
	if err != nil {
		return fmt.Errorf("node: audit log: %w", err)
	}
	if !sync {
		return nil
	}
	return a.f.Sync()
}

// read returns the last limit records, oldest first (both generations).
func (a *audit) read(limit int) ([]grid.AuditRecord, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []grid.AuditRecord
	for _, p := range []string{a.path + ".1", a.path} {
		f, err := os.Open(p)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("node: audit log: %w", err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var r grid.AuditRecord
			if json.Unmarshal(sc.Bytes(), &r) == nil {
				out = append(out, r)
			}
		}
		f.Close()
	}
	if limit > 0 && len(out) > limit {
		out = out[len(out)-limit:]
	}
	return out, nil
}

func (a *audit) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.f != nil {
		a.f.Close()
		a.f = nil
	}
}

// gist is what an audit record says about a request.
func gist(req any) string {
	hash := func(parts ...string) string {
		h := sha256.New()
		for _, p := range parts {
			h.Write([]byte(p))
			h.Write([]byte{0})
		}
		return hex.EncodeToString(h.Sum(nil))[:16]
	}
	switch r := req.(type) {
	case *gridpb.SubmitRequest:
		j := r.GetJob()
		return fmt.Sprintf("job on map %q: agg %q, func %q, script sha256:%s (filter and script hashed together)", j.GetMap(), j.GetAgg(), j.GetFunc(), hash(j.GetFilter(), j.GetScript(), j.GetAgg(), j.GetFunc()))
	case *gridpb.ApplyRequest:
		return fmt.Sprintf("entry processor on key %q: script sha256:%s", r.GetKey(), hash(r.GetScript()))
	case *gridpb.MembershipRequest:
		return fmt.Sprintf("partition %d: %s %s %s", r.GetPartition(), r.GetOp(), r.GetNodeId(), r.GetAddr())
	case *gridpb.NodeOpRequest:
		return fmt.Sprintf("%s node %s", r.GetOp(), r.GetNodeId())
	case *gridpb.QuarantineRequest:
		return fmt.Sprintf("quarantine partition %d: %s", r.GetPartition(), r.GetReason())
	case *gridpb.RecoverRequest:
		return fmt.Sprintf("recover partition %d from %q (dry run %v, forget unreachable %v)", r.GetPartition(), r.GetFrom(), r.GetDryRun(), r.GetForgetUnreachable())
	case *gridpb.RestoreRequest:
		return fmt.Sprintf("restore %d entries into partition %d", len(r.GetEntries()), r.GetPartition())
	case *gridpb.ReadPartitionRequest:
		return fmt.Sprintf("backup read of partition %d", r.GetPartition())
	case *gridpb.CreateMapRequest:
		return fmt.Sprintf("create map %q", r.GetName())
	}
	return ""
}

// auditCall records a finished call when its method is audited, and
// every call refused by authorization.
func (s *security) auditCall(ctx context.Context, method string, req any, start time.Time, err error, refused bool) {
	role := roleFor(method)
	if s.audit == nil || (!refused && !audited(method, role)) {
		return
	}
	r := grid.AuditRecord{Time: start.UTC(), Node: s.audit.node, Who: "anonymous", Method: method, Role: role,
		What: gist(req), Outcome: "ok", Took: time.Since(start).Round(time.Microsecond).String()}
	if who, ok := gridtls.FromContext(ctx); ok {
		switch who.Kind {
		case gridtls.KindNode:
			r.Who = "node:" + who.Name
		case gridtls.KindToken:
			r.Who = "token:" + who.Name
		default:
			r.Who = "client:" + who.Name
		}
	}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		r.From = p.Addr.String()
	}
	if err != nil {
		st := status.Convert(err)
		r.Outcome = st.Code().String() + ": " + st.Message()
	}
	// Operations are synced before they are answered; refusals are not (a
	// caller sending refused calls in a loop must not cost a sync each).
	if werr := s.audit.record(r, !refused); werr != nil && s.log != nil {
		s.log.Error("audit record not written", "method", method, "who", r.Who, "err", werr)
	}
}
