package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/nodeagent/reconcile"
	"github.com/spoke-proxy/spoke/nodeagent/state"
	"github.com/spoke-proxy/spoke/nodeagent/view"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// Options configure an Agent.
type Options struct {
	// NodeName is the node the agent runs on.
	NodeName string
	// Conn is the connection to the control plane. The agent does not close
	// it.
	Conn grpc.ClientConnInterface
	// Datapath is what the agent programs.
	Datapath datapath.Datapath
	// StatePath is the bbolt file of applied resources; "" keeps nothing.
	StatePath string
	// RepairInterval is how often the datapath is read back and repaired;
	// 0 disables the drift check.
	RepairInterval time.Duration
	// MinBackoff and MaxBackoff bound the wait between reconnects; the wait
	// is jittered. Defaults: 250ms and 30s.
	MinBackoff, MaxBackoff time.Duration
	// Metrics records the agent's figures; nil records nothing.
	Metrics *Metrics
	Logger  *slog.Logger
	// Decoder checks and decodes the services the control plane sends.
	// Default: view.Decoder.
	Decoder Decoder
	// OnApplied, when set, is called after each response has been applied
	// to the datapath and before it is acknowledged, with the resources and
	// removals that the datapath now holds. It must not keep the agent
	// waiting.
	OnApplied func(applied []*spokev1.Resource, removed []string)
}

// Decoder checks a received service resource and decodes it into the
// datapath's type. A process that runs many agents on the same views may
// give them one Decoder that decodes each resource once.
type Decoder interface {
	Service(r *spokev1.Resource) (*datapath.Service, error)
}

// Agent keeps a node's datapath equal to the view the control plane
// computes for it.
type Agent struct {
	spokev1.UnimplementedAgentInspectionServiceServer

	opts Options
	log  *slog.Logger
	rec  *reconcile.Reconciler

	// applyMu serialises what writes the datapath and the state file
	// (Restore, handle): kernel writes and fsyncs are slow, and mu, which
	// health checks and inspection take, is never held through them.
	applyMu sync.Mutex
	store   *state.Store // under applyMu
	// stamped is the stamp last given to the datapath; under applyMu.
	stamped []byte
	// adopted: Restore found the datapath stamped with the state file's
	// stamp and took its services without programming them; Run reads
	// them back to verify them.
	adopted bool

	mu     sync.Mutex
	cached map[string]*spokev1.Resource // accepted: the last good state; written under both locks
	// revisions are those of the newest response applied: a replica of the
	// control plane behind them waits before answering (no rollback).
	revisions      *spokev1.ApiRevisions
	restored       bool
	restoredCount  int
	cacheAppliedAt time.Time
	updatedAt      time.Time // the datapath was last programmed or verified
	connected      bool
	connectedAt    time.Time
	received       uint64
	acks, nacks    uint64
	lastNack       string
	lastNonce      string
	// digests is whether the control plane of the last stream announced
	// that it reads a digest of the held versions (VersionsDigestHeader).
	digests bool
}

var _ spokev1.AgentInspectionServiceServer = (*Agent)(nil)

// New returns an agent; Run starts it.
func New(opts Options) (*Agent, error) {
	if opts.NodeName == "" {
		return nil, errors.New("agent: no node name")
	}
	if opts.Datapath == nil || opts.Conn == nil {
		return nil, errors.New("agent: datapath and control-plane connection are required")
	}
	if opts.MinBackoff == 0 {
		opts.MinBackoff = 250 * time.Millisecond
	}
	if opts.MaxBackoff == 0 {
		opts.MaxBackoff = 30 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Decoder == nil {
		opts.Decoder = view.Decoder{}
	}
	return &Agent{
		opts:   opts,
		log:    opts.Logger.With("node", opts.NodeName),
		rec:    reconcile.New(opts.Datapath),
		cached: map[string]*spokev1.Resource{},
	}, nil
}

// Restore opens the state file and programs the datapath from it. A corrupt
// file is moved aside and the agent starts empty; a file the system will
// not let it use is left where it is and the agent runs without one. Either
// way the datapath keeps what it holds until the first sync. A datapath
// stamped with the file's stamp already holds the file's services: Restore
// takes them as they are, and Run reads them back to verify them. After
// Restore the agent is ready: it serves with what it had, before it has
// reconnected.
func (a *Agent) Restore(ctx context.Context) error {
	a.applyMu.Lock()
	defer a.applyMu.Unlock()
	if a.Ready() {
		return nil
	}
	restored := 0
	if a.opts.StatePath != "" {
		st, err := a.openState()
		if err != nil {
			return err
		}
		if st != nil {
			a.store = st
			if restored, err = a.restoreFrom(ctx, st); err != nil {
				return err
			}
		}
	}
	a.mu.Lock()
	a.restored = true
	a.restoredCount = restored
	a.cacheAppliedAt = time.Now()
	a.updatedAt = a.cacheAppliedAt
	a.mu.Unlock()
	a.log.Info("datapath programmed from state file", "resources", restored, "stamped", a.adopted)
	return nil
}

// openState opens the state file, moving a corrupt one aside. It returns
// nil, and no error, for a file the system will not let the agent use.
func (a *Agent) openState() (*state.Store, error) {
	st, moved, err := state.OpenOrReset(a.opts.StatePath)
	switch {
	case errors.Is(err, state.ErrUnavailable):
		a.log.Error("state file cannot be used (an I/O or permission error, not corruption): running without it; the datapath is left as it is until the control plane resyncs it",
			"path", a.opts.StatePath, "err", err)
		a.opts.Metrics.stateUnavailable()
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("opening state: %w", err)
	}
	if moved != "" {
		a.log.Warn("state file was corrupt; moved aside, resyncing from the control plane", "path", a.opts.StatePath, "moved_to", moved)
		a.opts.Metrics.corruptState()
	}
	return st, nil
}

// restoreFrom programs the datapath from the state file's resources and
// returns how many it holds.
func (a *Agent) restoreFrom(ctx context.Context, st *state.Store) (int, error) {
	loaded, err := st.Load()
	if err != nil {
		return 0, fmt.Errorf("loading state: %w", err)
	}
	node, upsert, good, bad := decodeAll(slices.Collect(maps.Values(loaded)), view.Service)
	for name, err := range bad {
		a.log.Warn("dropping a cached resource that does not decode", "resource", name, "err", err)
	}
	var failed map[string]error
	if len(bad) == 0 && a.datapathHolds(ctx, st.Stamp()) {
		if err := a.rec.Adopt(ctx, node, upsert); err != nil {
			return 0, fmt.Errorf("adopting cached state: %w", err)
		}
		a.adopted = true
	} else {
		if failed, err = a.rec.Apply(ctx, node, upsert, nil); err != nil {
			return 0, fmt.Errorf("programming cached state: %w", err)
		}
		for name, err := range failed {
			a.log.Warn("cached service could not be programmed", "service", name, "err", err)
		}
		if len(failed) == 0 && len(bad) == 0 {
			a.stampDatapath(ctx)
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, r := range good {
		if _, ok := failed[r.GetName()]; !ok {
			a.cached[r.GetName()] = r
		}
	}
	a.revisions = st.Revisions()
	return len(a.cached), nil
}

// datapathHolds reports whether the datapath is stamped with the state
// file's stamp, that is, holds what the file holds (datapath.Stamper).
func (a *Agent) datapathHolds(ctx context.Context, stamp []byte) bool {
	if stamp == nil {
		return false
	}
	got, err := datapath.Stamped(ctx, a.opts.Datapath)
	if err != nil {
		if !errors.Is(err, errors.ErrUnsupported) {
			a.log.Warn("reading the datapath's stamp; programming it from the state file", "err", err)
		}
		return false
	}
	a.stamped = got
	return bytes.Equal(got, stamp)
}

// stampDatapath gives the datapath the state file's stamp, once the
// datapath holds what the file holds: the caller applied everything the
// file holds, and nothing is left to retry. Under applyMu.
func (a *Agent) stampDatapath(ctx context.Context) {
	if a.store == nil || a.store.Stamp() == nil || bytes.Equal(a.stamped, a.store.Stamp()) || a.rec.Dirty() {
		return
	}
	if err := datapath.Stamp(ctx, a.opts.Datapath, a.store.Stamp()); err != nil {
		if !errors.Is(err, errors.ErrUnsupported) {
			a.log.Warn("stamping the datapath (the next restart programs it from the state file)", "err", err)
		}
		return
	}
	a.stamped = a.store.Stamp()
}

// verifyAdopted reads back the datapath whose services Restore adopted and
// repairs what differs: its stamp vouches for the agent's own writes only.
func (a *Agent) verifyAdopted(ctx context.Context) {
	drift, err := a.rec.Repair(ctx)
	a.repaired(drift, err)
	if err == nil {
		a.log.Info("datapath adopted from its stamp verified", "differences", len(drift))
	}
}

// repaired reports a drift repair.
func (a *Agent) repaired(drift []string, err error) {
	if err != nil {
		a.log.Warn("drift repair failed", "err", err)
	} else {
		a.markUpdated()
	}
	if len(drift) > 0 {
		a.log.Warn("datapath drifted; repaired", "differences", drift)
		a.opts.Metrics.drift(len(drift))
	}
}

// Ready reports whether the datapath holds the agent's last known state.
func (a *Agent) Ready() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.restored
}

// Run restores the cached state, then streams the node's view until ctx
// is done, reconnecting with jittered backoff. It closes the state file
// when it returns.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.Restore(ctx); err != nil {
		return err
	}
	defer a.closeState()
	var verify sync.WaitGroup
	defer verify.Wait()
	if a.adopted {
		verify.Go(func() { a.verifyAdopted(ctx) })
	}
	if a.opts.RepairInterval > 0 {
		go a.rec.Run(ctx, a.opts.RepairInterval, a.repaired)
	}
	backoff := a.opts.MinBackoff
	behind := 0
	for {
		progressed, err := a.stream(ctx)
		if ctx.Err() != nil {
			return nil
		}
		a.opts.Metrics.streamFailed(err)
		behind = a.refusedAsAhead(err, behind)
		if progressed && !errors.Is(err, errProtocol) {
			backoff = a.opts.MinBackoff
		}
		a.log.Info("control-plane stream ended; reconnecting", "err", err, "in", backoff)
		wait := backoff/2 + rand.N(backoff/2+1)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		backoff = min(2*backoff, a.opts.MaxBackoff)
	}
}

// forgetRevisionsAfter is how many control-plane replicas in a row may
// refuse the agent for holding newer API revisions than theirs before the
// agent stops claiming them. Replicas that lag catch up within their
// CatchUpTimeout; refusals that go on mean the revisions themselves moved
// back (an etcd restored or replaced), and without forgetting them the
// agent would never be served again.
const forgetRevisionsAfter = 3

// refusedAsAhead counts consecutive refusals of a stream because the agent
// is ahead of the replica (codes.Aborted) and forgets the agent's API
// revisions after forgetRevisionsAfter of them; it returns the new count.
func (a *Agent) refusedAsAhead(err error, behind int) int {
	if status.Code(err) != codes.Aborted {
		return 0
	}
	behind++
	if behind < forgetRevisionsAfter {
		return behind
	}
	a.mu.Lock()
	held := a.revisions
	a.revisions = nil
	a.mu.Unlock()
	a.log.Warn("control-plane replicas keep refusing the API revisions this agent holds; forgetting them (the next response may be older than what the datapath holds)",
		"revisions", held, "refusals", behind)
	return 0
}

func (a *Agent) closeState() {
	a.applyMu.Lock()
	defer a.applyMu.Unlock()
	if a.store != nil {
		a.store.Close()
		a.store = nil
	}
}

// stream runs one stream to the control plane. progressed reports whether
// at least one response was handled.
func (a *Agent) stream(ctx context.Context) (progressed bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The stream waits for the connection rather than failing while the
	// control plane is away: the connection's own backoff (DialOptions,
	// at most 5s) then decides when the agent is back, not this loop's,
	// which grows longer.
	s, err := spokev1.NewViewServiceClient(a.opts.Conn).StreamViews(ctx, grpc.WaitForReady(true))
	if err != nil {
		return false, err
	}
	a.mu.Lock()
	a.lastNonce = "" // nonces are per stream
	held := make(map[string]string, len(a.cached))
	for name, r := range a.cached {
		held[name] = r.GetVersion()
	}
	revisions := a.revisions
	// A control plane that announced it reads digests (on the last stream)
	// is sent the digest of what the agent holds: 32 bytes, not every
	// version, when thousands of agents reconnect at once.
	digest := a.digests && len(held) > 0
	a.mu.Unlock()
	first := &spokev1.StreamViewsRequest{NodeName: a.opts.NodeName, InitialApiRevisions: revisions}
	if digest {
		first.InitialVersionsDigest = spokev1.VersionsDigest(held)
	} else {
		first.InitialResourceVersions = held
	}
	if err := s.Send(first); err != nil {
		return false, err
	}
	defer a.setConnected(false)
	asked := false
	for {
		resp, err := s.Recv()
		if err != nil {
			return progressed, err
		}
		if !progressed && !asked {
			reads, err := spokev1.ReadsDigests(s, digest)
			a.mu.Lock()
			a.digests = reads
			a.mu.Unlock()
			if err != nil {
				return false, err
			}
		}
		if resp.GetSendInitialVersions() {
			if !digest || asked || progressed {
				return progressed, fmt.Errorf("%w: send_initial_versions unasked for", errProtocol)
			}
			asked = true
			if err := s.Send(&spokev1.StreamViewsRequest{InitialResourceVersions: held}); err != nil {
				return progressed, err
			}
			continue
		}
		if !progressed {
			a.setConnected(true)
			a.opts.Metrics.connected(true)
			defer a.opts.Metrics.connected(false)
		}
		progressed = true
		ack, err := a.handle(ctx, resp)
		if err != nil {
			return progressed, err
		}
		// The first response of a stream brings the agent's whole view:
		// from now on what the control plane did not send may be removed.
		a.rec.MarkSynced()
		if err := s.Send(ack); err != nil {
			return progressed, err
		}
	}
}

func (a *Agent) setConnected(c bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.connected = c
	if c {
		a.connectedAt = time.Now()
	}
}

// errProtocol marks a response that breaks the protocol; the stream is
// dropped and opened again.
var errProtocol = errors.New("protocol violation")

// handle applies one response and returns the ACK or NACK for it.
func (a *Agent) handle(ctx context.Context, resp *spokev1.StreamViewsResponse) (*spokev1.StreamViewsRequest, error) {
	start := time.Now()
	nonce := resp.GetNonce()
	if nonce == "" || len(nonce) > 64 {
		return nil, fmt.Errorf("%w: response nonce %.64q", errProtocol, nonce)
	}
	a.applyMu.Lock()
	defer a.applyMu.Unlock()
	if err := a.takeNonce(nonce, len(resp.GetResources())); err != nil {
		return nil, err
	}
	rejected, fresh, remove := a.check(resp)
	node, upsert, good, bad := decodeAll(fresh, a.opts.Decoder.Service)
	maps.Copy(rejected, bad)
	// The state file takes the intent before the datapath: a kill between
	// the two writes leaves a file that is ahead of the datapath, which the
	// restart applies, never one behind it, which would roll it back.
	revisions := resp.GetApiRevisions()
	a.persist(good, remove, revisions)
	failed, err := a.rec.Apply(ctx, node, upsert, remove)
	if err != nil {
		// The node is invalid: nothing in the response is applied.
		failed = map[string]error{}
		for _, r := range good {
			failed[r.GetName()] = err
		}
		for _, name := range remove {
			failed[name] = err
		}
	}
	if err == nil {
		a.markUpdated()
	}
	maps.Copy(rejected, failed)
	applied, removed := a.commit(good, remove, failed)
	if err == nil && len(failed) == 0 {
		a.stampDatapath(ctx)
	}
	if revisions != nil {
		a.mu.Lock()
		a.revisions = revisions
		a.mu.Unlock()
	}
	if a.opts.OnApplied != nil {
		a.opts.OnApplied(applied, removed)
	}
	a.opts.Metrics.applied(time.Since(start))
	return a.answer(nonce, rejected), nil
}

// takeNonce records a response's nonce; a repeated one breaks the protocol.
func (a *Agent) takeNonce(nonce string, resources int) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if nonce == a.lastNonce {
		return fmt.Errorf("%w: nonce %q repeated", errProtocol, nonce)
	}
	a.lastNonce = nonce
	a.received += uint64(resources)
	a.opts.Metrics.received(resources)
	return nil
}

// check sorts a response into resources that break its rules (rejected),
// resources to decode (fresh) and held names to remove.
func (a *Agent) check(resp *spokev1.StreamViewsResponse) (rejected map[string]error, fresh []*spokev1.Resource, remove []string) {
	rejected = map[string]error{}
	seen := map[string]bool{}
	for _, r := range resp.GetResources() {
		name := r.GetName()
		switch {
		case seen[name]:
			rejected[name] = errors.New("resource twice in one response")
			continue
		case name == "" || len(name) > 512:
			rejected[fmt.Sprintf("%.64s", name)] = errors.New("bad resource name")
			continue
		}
		seen[name] = true
		// The decoder checks the versions of services.
		if name == spokev1.NodeResourceName {
			if err := view.CheckVersion(r); err != nil {
				rejected[name] = err
				continue
			}
		}
		fresh = append(fresh, r)
	}
	for _, name := range resp.GetRemovedResources() {
		if seen[name] || name == spokev1.NodeResourceName {
			rejected[name] = errors.New("removed and sent in one response, or the node removed")
			continue
		}
		if _, ok := a.cached[name]; ok {
			remove = append(remove, name)
		}
	}
	return rejected, fresh, remove
}

// persist writes what the agent is about to apply to the state file. A
// file that fails a write is dropped (closed and deleted), so that a
// restart cannot roll the datapath back from it.
func (a *Agent) persist(put []*spokev1.Resource, remove []string, revisions *spokev1.ApiRevisions) {
	if a.store == nil || (len(put)+len(remove) == 0 && (revisions == nil || proto.Equal(revisions, a.store.Revisions()))) {
		return
	}
	err := a.store.Update(put, remove, revisions)
	if err == nil {
		return
	}
	a.opts.Metrics.stateWriteError()
	path := a.store.Path()
	a.store.Close()
	a.store = nil
	rmErr := os.Remove(path)
	a.log.Error("writing state file; running without it (a restart resyncs from the control plane)", "err", err, "path", path, "removed", rmErr == nil)
}

// commit records what the datapath accepted, and takes back from the state
// file what it rejected. It returns the resources and removals now held.
func (a *Agent) commit(good []*spokev1.Resource, remove []string, failed map[string]error) (applied []*spokev1.Resource, removed []string) {
	var revertPut []*spokev1.Resource
	var revertRemove []string
	a.mu.Lock()
	for _, r := range good {
		name := r.GetName()
		if _, bad := failed[name]; !bad {
			applied = append(applied, r)
			a.cached[name] = r
		} else if old, ok := a.cached[name]; ok {
			revertPut = append(revertPut, old)
		} else {
			revertRemove = append(revertRemove, name)
		}
	}
	for _, name := range remove {
		if _, bad := failed[name]; !bad {
			removed = append(removed, name)
			delete(a.cached, name)
		} else {
			revertPut = append(revertPut, a.cached[name])
		}
	}
	a.mu.Unlock()
	a.persist(revertPut, revertRemove, nil)
	return applied, removed
}

// answer builds the ACK, or the NACK naming the rejected resources.
func (a *Agent) answer(nonce string, rejected map[string]error) *spokev1.StreamViewsRequest {
	ack := &spokev1.StreamViewsRequest{ResponseNonce: nonce}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(rejected) == 0 {
		a.acks++
		return ack
	}
	a.nacks++
	a.opts.Metrics.nacked()
	names := slices.Sorted(maps.Keys(rejected))
	var msgs []string
	for _, n := range names[:min(len(names), 5)] {
		msgs = append(msgs, fmt.Sprintf("%s: %v", n, rejected[n]))
	}
	msg := strings.Join(msgs, "; ")
	if len(names) > 5 {
		msg += fmt.Sprintf("; and %d more", len(names)-5)
	}
	a.lastNack = msg
	a.log.Warn("rejecting part of a response; keeping the last good state", "nonce", nonce, "rejected", len(names), "error", msg)
	ack.Error = &spokev1.Rejection{Message: msg, ResourceNames: names}
	return ack
}

// decodeAll decodes resources into the datapath's types. good are the
// resources that decoded; bad maps the others to their error.
func decodeAll(rs []*spokev1.Resource, service func(*spokev1.Resource) (*datapath.Service, error)) (node *datapath.Node, upsert []*datapath.Service, good []*spokev1.Resource, bad map[string]error) {
	bad = map[string]error{}
	// Services are decoded on every CPU: a restart from a state file of
	// 10,000 services waits for this.
	type result struct {
		s   *datapath.Service
		err error
	}
	results := make([]result, len(rs))
	var wg sync.WaitGroup
	workers := min(runtime.GOMAXPROCS(0), max(1, len(rs)/256))
	for w := range workers {
		wg.Go(func() {
			for i := w; i < len(rs); i += workers {
				if rs[i].GetName() != spokev1.NodeResourceName {
					results[i].s, results[i].err = service(rs[i])
				}
			}
		})
	}
	wg.Wait()
	for i, r := range rs {
		if r.GetName() == spokev1.NodeResourceName {
			n, err := view.Node(r)
			if err != nil {
				bad[r.GetName()] = err
				continue
			}
			node = &n
			good = append(good, r)
			continue
		}
		if err := results[i].err; err != nil {
			bad[r.GetName()] = err
			continue
		}
		upsert = append(upsert, results[i].s)
		good = append(good, r)
	}
	return node, upsert, good, bad
}

// GetState implements spokev1.AgentInspectionServiceServer.
func (a *Agent) GetState(ctx context.Context, _ *spokev1.GetStateRequest) (*spokev1.GetStateResponse, error) {
	a.mu.Lock()
	resp := &spokev1.GetStateResponse{
		NodeName:          a.opts.NodeName,
		Datapath:          a.opts.Datapath.Name(),
		Connected:         a.connected,
		ResourcesReceived: a.received,
		RestoredFromCache: uint64(a.restoredCount),
		Acks:              a.acks,
		Nacks:             a.nacks,
		LastNack:          a.lastNack,
	}
	if !a.cacheAppliedAt.IsZero() {
		resp.CacheAppliedAt = timestamppb.New(a.cacheAppliedAt)
	}
	if !a.connectedAt.IsZero() {
		resp.ConnectedAt = timestamppb.New(a.connectedAt)
	}
	for _, name := range slices.Sorted(maps.Keys(a.cached)) {
		resp.Cached = append(resp.Cached, a.cached[name])
	}
	a.mu.Unlock()
	programmed, err := a.opts.Datapath.Programmed(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading the datapath: %w", err)
	}
	resp.ProgrammedServices = slices.Sorted(maps.Keys(programmed))
	resp.Drift = a.rec.LastDrift()
	return resp, nil
}

// Reconciler returns the agent's reconciler.
func (a *Agent) Reconciler() *reconcile.Reconciler { return a.rec }
