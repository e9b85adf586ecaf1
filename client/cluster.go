package client

import (
	"context"
	"encoding/json"
	"fmt"

	"google.golang.org/grpc"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// NodeInfo is what the cluster knows about one node: its record (address,
// capabilities, state, latest load) and how long the metadata leader has
// not heard from it.
type NodeInfo struct {
	grid.NodeRecord
	SilentMS int64 `json:"silent_ms"`
}

// Nodes lists the cluster's nodes, as the metadata leader sees them.
func (c *Client) Nodes(ctx context.Context) ([]NodeInfo, error) {
	var out []NodeInfo
	err := c.runCluster(ctx, "list nodes", false, func(ctx context.Context, cc *grpc.ClientConn, _ target, opts ...grpc.CallOption) error {
		r, err := gridpb.NewClusterClient(cc).Nodes(ctx, &gridpb.NodesRequest{}, opts...)
		if err != nil {
			return err
		}
		out = nil
		if err := json.Unmarshal(r.GetNodesJson(), &out); err != nil {
			return fmt.Errorf("%w: node list: %v", grid.ErrBadRequest, err)
		}
		return nil
	})
	return out, err
}

// DrainNode marks a node draining: its replicas move to other nodes (watch
// Table or Nodes for progress). It fails if the other nodes cannot take
// them.
func (c *Client) DrainNode(ctx context.Context, id string) error { return c.nodeOp(ctx, id, "drain") }

// UndrainNode cancels a drain; replicas that moved stay where they are.
func (c *Client) UndrainNode(ctx context.Context, id string) error {
	return c.nodeOp(ctx, id, "undrain")
}

// RemoveNode retires a node that holds no replicas (drain it first).
func (c *Client) RemoveNode(ctx context.Context, id string) error {
	return c.nodeOp(ctx, id, "remove")
}

func (c *Client) nodeOp(ctx context.Context, id, op string) error {
	req := &gridpb.NodeOpRequest{NodeId: id, Op: op}
	return c.runCluster(ctx, op+" node", true, func(ctx context.Context, cc *grpc.ClientConn, _ target, opts ...grpc.CallOption) error {
		_, err := gridpb.NewClusterClient(cc).NodeOp(ctx, req, opts...)
		return err
	})
}
