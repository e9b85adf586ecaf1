package node

import (
	"context"
	"fmt"
	"time"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
	"github.com/zerogrid/zerogrid/replication"
)

// lockService implements the Lock gRPC service. A lock's record lives in the
// partition grid.LockPartition picks; every call is a Raft command there,
// and the state machine decides with the leader's clock stamped on it.
type lockService struct {
	gridpb.UnimplementedLockServer
	s *service
}

// lockGroup validates a lock call's name and owner and returns the local
// group of the lock's partition.
func (l *lockService) lockGroup(name string, owner []byte) (*replication.Group, error) {
	if err := grid.ValidateLockName(name); err != nil {
		return nil, err
	}
	if len(owner) != grid.LockOwnerLen {
		return nil, fmt.Errorf("%w: lock owner id of %d bytes, want %d", grid.ErrBadRequest, len(owner), grid.LockOwnerLen)
	}
	return l.s.group(grid.LockPartition(name, l.s.n.table().NumPartitions()))
}

func (l *lockService) Acquire(ctx context.Context, req *gridpb.AcquireLockRequest) (*gridpb.AcquireLockResponse, error) {
	if err := grid.ValidateLeaseTTL(time.Duration(req.TtlNs)); err != nil {
		return nil, err
	}
	g, err := l.lockGroup(req.Name, req.Owner)
	if err != nil {
		return nil, err
	}
	res, err := l.s.propose(ctx, g, &gridpb.WriteHeader{ClientId: req.ClientId, Seq: req.Seq}, &gridpb.Command{
		Op: &gridpb.Command_LockAcquire{LockAcquire: &gridpb.LockAcquireOp{Name: req.Name, Owner: req.Owner, TtlNs: req.TtlNs}},
	})
	if err != nil {
		return nil, err
	}
	if !res.Ok {
		// This node leads the partition: its clock is the one that
		// stamped the holder's lease.
		return &gridpb.AcquireLockResponse{Token: res.Version, HolderRemainingNs: max(0, res.LeaseExpiry-time.Now().UnixNano())}, nil
	}
	return &gridpb.AcquireLockResponse{Acquired: true, Token: res.Version}, nil
}

func (l *lockService) Renew(ctx context.Context, req *gridpb.RenewLockRequest) (*gridpb.RenewLockResponse, error) {
	err := l.heldOp(ctx, req.ClientId, req.Seq, req.Name, req.Owner, req.Token, func() *gridpb.Command {
		return &gridpb.Command{Op: &gridpb.Command_LockRenew{LockRenew: &gridpb.LockRenewOp{Name: req.Name, Owner: req.Owner, Token: req.Token}}}
	})
	if err != nil {
		return nil, err
	}
	return &gridpb.RenewLockResponse{}, nil
}

func (l *lockService) Release(ctx context.Context, req *gridpb.ReleaseLockRequest) (*gridpb.ReleaseLockResponse, error) {
	err := l.heldOp(ctx, req.ClientId, req.Seq, req.Name, req.Owner, req.Token, func() *gridpb.Command {
		return &gridpb.Command{Op: &gridpb.Command_LockRelease{LockRelease: &gridpb.LockReleaseOp{Name: req.Name, Owner: req.Owner, Token: req.Token}}}
	})
	if err != nil {
		return nil, err
	}
	return &gridpb.ReleaseLockResponse{}, nil
}

// heldOp validates and proposes a command only the holder may make (renew,
// release); it fails with grid.ErrLockNotHeld if the caller does not hold
// the lock with that token.
func (l *lockService) heldOp(ctx context.Context, clientID, seq uint64, name string, owner []byte, token uint64, cmd func() *gridpb.Command) error {
	g, err := l.lockGroup(name, owner)
	if err != nil {
		return err
	}
	if token == 0 {
		return fmt.Errorf("%w: lock token 0 (tokens start at 1)", grid.ErrBadRequest)
	}
	_, err = l.s.propose(ctx, g, &gridpb.WriteHeader{ClientId: clientID, Seq: seq}, cmd())
	return err
}
