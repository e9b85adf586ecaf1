package client

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// RetryPolicy bounds how hard the client tries one request. A request is
// retried until it succeeds, fails for good, or its deadline passes: the
// caller's context deadline, or OpTimeout when the context has none. Each
// attempt picks its node afresh (the leader a node named, another replica,
// or a refetched partition table).
type RetryPolicy struct {
	// OpTimeout is the deadline of one request whose context has none.
	// Long streams (backup, check, jobs) are bounded only by the context.
	// Zero: no default deadline.
	OpTimeout time.Duration
	// MaxAttempts, if not zero, also caps the attempts of one request, the
	// first included.
	MaxAttempts int
	// BaseBackoff is the first pause between attempts; it doubles up to
	// MaxBackoff. Each pause is jittered to between half and all of it.
	BaseBackoff time.Duration
	MaxBackoff  time.Duration
	// AttemptTimeout bounds one attempt, so that a node that accepted the
	// connection but never answers does not use up the whole context. Zero
	// leaves attempts bounded only by the context.
	AttemptTimeout time.Duration
}

// DefaultOpTimeout is the default deadline of one request: several leader
// elections' worth (one takes 1–3 s under the default profile).
const DefaultOpTimeout = 15 * time.Second

// DefaultRetryPolicy retries until the request's deadline (DefaultOpTimeout
// unless the context sets one), with jittered pauses from 10 ms up to 200 ms,
// so that a request issued during an election lands soon after it ends.
func DefaultRetryPolicy() RetryPolicy {
	return RetryPolicy{OpTimeout: DefaultOpTimeout, BaseBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}
}

// DefaultScanPageSize is how many entries Scan asks for per page.
const DefaultScanPageSize = 100

// maxRecvMsgBytes leaves room for a 1 MiB value and the largest scan page a
// node should send.
const maxRecvMsgBytes = 16 << 20

// WriteOption changes one Put request (an expiry, a fencing token).
type WriteOption func(*gridpb.PutRequest)

// Option changes how DialWith builds a Client.
type Option func(*options)

type options struct {
	limits       grid.Limits
	retry        RetryPolicy
	dialOpts     []grpc.DialOption
	logger       *slog.Logger
	clientID     uint64
	scanPageSize int
	tlsDir       string
	tokenFile    string
}

func defaultOptions() options {
	return options{
		limits:       grid.DefaultLimits(),
		retry:        DefaultRetryPolicy(),
		logger:       slog.New(slog.DiscardHandler),
		scanPageSize: DefaultScanPageSize,
	}
}

// WithLimits sets the key and value limits checked before a request is sent.
// They should match the cluster's; the default is grid.DefaultLimits.
func WithLimits(l grid.Limits) Option { return func(o *options) { o.limits = l } }

// WithRetry replaces the retry policy.
func WithRetry(p RetryPolicy) Option { return func(o *options) { o.retry = p } }

// WithDialOptions adds gRPC dial options (TLS credentials, interceptors, ...)
// after the client's own, so they take precedence. By default connections are
// insecure and accept messages up to 16 MiB.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dialOpts = append(o.dialOpts, opts...) }
}

// WithTLSDir connects with mutual TLS, as zerogrid nodes require unless
// they run insecure: dir holds the cluster's ca.crt and the client's
// client.crt and client.key (or a node's node.crt and node.key), as
// 'zerogrid cert client' writes them. The key pair is read again when its
// files change. An empty dir leaves connections insecure.
func WithTLSDir(dir string) Option { return func(o *options) { o.tlsDir = dir } }

// WithTokenFile authenticates every call with the bearer token in the
// file at path ('zerogrid cert token') instead of a client certificate;
// it needs WithTLSDir naming a directory with the cluster's ca.crt.
func WithTokenFile(path string) Option { return func(o *options) { o.tokenFile = path } }

// WithLogger sets where the client logs retries and table refreshes (at debug
// and warn level). By default it logs nothing.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l == nil {
			l = slog.New(slog.DiscardHandler)
		}
		o.logger = l
	}
}

// WithClientID fixes the id that, with a sequence number, makes each write
// unique to the nodes' deduplication. By default it is a random 64-bit number;
// fix it only in tests, since two clients sharing an id would see each
// other's outcomes.
func WithClientID(id uint64) Option { return func(o *options) { o.clientID = id } }

// WithScanPageSize sets how many entries Scan asks a node for at a time.
func WithScanPageSize(n int) Option { return func(o *options) { o.scanPageSize = n } }

// validate reports every problem at once.
func (o *options) validate() error {
	errs := []error{o.limits.Validate()}
	r := o.retry
	if r.MaxAttempts < 0 {
		errs = append(errs, fmt.Errorf("%w: retry max attempts %d is negative", grid.ErrBadConfig, r.MaxAttempts))
	}
	if r.OpTimeout < 0 {
		errs = append(errs, fmt.Errorf("%w: retry op timeout %v is negative", grid.ErrBadConfig, r.OpTimeout))
	}
	if r.MaxAttempts == 0 && r.OpTimeout == 0 {
		errs = append(errs, fmt.Errorf("%w: a retry policy needs an op timeout or max attempts", grid.ErrBadConfig))
	}
	if r.BaseBackoff <= 0 {
		errs = append(errs, fmt.Errorf("%w: retry base backoff %v must be positive", grid.ErrBadConfig, r.BaseBackoff))
	}
	if r.MaxBackoff < r.BaseBackoff {
		errs = append(errs, fmt.Errorf("%w: retry max backoff %v is below the base backoff %v", grid.ErrBadConfig, r.MaxBackoff, r.BaseBackoff))
	}
	if r.AttemptTimeout < 0 {
		errs = append(errs, fmt.Errorf("%w: retry attempt timeout %v is negative", grid.ErrBadConfig, r.AttemptTimeout))
	}
	if o.scanPageSize < 1 || o.scanPageSize > 1<<16 {
		errs = append(errs, fmt.Errorf("%w: scan page size %d must be in 1..65536", grid.ErrBadConfig, o.scanPageSize))
	}
	return errors.Join(errs...)
}
