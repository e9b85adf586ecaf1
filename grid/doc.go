// Package grid is zerogrid's shared vocabulary. It does no I/O: it maps keys
// to partitions (with {hash tag} affinity), places partition replicas on nodes
// with a bounded-load consistent-hash ring, describes node records and the
// partition table, and validates user input against the cluster's limits.
//
// Every other package speaks these types: node and replication to decide what
// to host, client to route a request straight to a partition's leader.
package grid
