package grid

import "time"

// AuditRecord is one line of a node's audit log: who did what, when, from
// where, and how it ended.
type AuditRecord struct {
	Time    time.Time `json:"time"`
	Node    string    `json:"node"`           // the node that served the call
	Who     string    `json:"who"`            // "client:NAME", "node:ID", or "anonymous" (insecure)
	From    string    `json:"from,omitempty"` // the caller's address
	Method  string    `json:"method"`         // the gRPC method
	Role    string    `json:"role"`           // the role it needs
	What    string    `json:"what,omitempty"` // the request's gist: map, node, partition, script hash
	Outcome string    `json:"outcome"`        // "ok", or the gRPC code and message
	Took    string    `json:"took,omitempty"` // how long the call ran
}
