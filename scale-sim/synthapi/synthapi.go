package synthapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Kind is one of the resources the server serves.
type Kind int

// The kinds served.
const (
	Nodes Kind = iota
	Services
	EndpointSlices
	// Pods are the agents' pods, in AgentNamespace, which a control plane
	// that authenticates agents watches.
	Pods
	numKinds
)

// AgentNamespace is the only namespace whose pods the server serves.
const AgentNamespace = "kube-system"

var kinds = [numKinds]struct {
	path, apiVersion, kind string
}{
	Nodes:          {"/api/v1/nodes", "v1", "Node"},
	Services:       {"/api/v1/services", "v1", "Service"},
	EndpointSlices: {"/apis/discovery.k8s.io/v1/endpointslices", "discovery.k8s.io/v1", "EndpointSlice"},
	Pods:           {"/api/v1/namespaces/" + AgentNamespace + "/pods", "v1", "Pod"},
}

// podAccountField is the one field selector served, on pods.
const podAccountField = "spec.serviceAccountName"

// history is how many events per kind a watch can resume from.
const history = 1 << 16

// watcherBuffer is how many events a watcher may lag behind before it is
// closed and must resume.
const watcherBuffer = 1 << 14

// Server serves list and watch of Nodes, Services and EndpointSlices from
// objects held in memory. It is safe for concurrent use.
type Server struct {
	srv  *http.Server
	lis  net.Listener
	rv   uint64
	mu   sync.Mutex
	data [numKinds]*store
	sent [numKinds]uint64 // bytes written to clients, by kind
	mux  *http.ServeMux

	requests atomic.Uint64
}

type store struct {
	objects map[string]*object
	events  []event // ascending rv, at most history
	// dropped is the version of the newest event no longer in events.
	dropped  uint64
	watchers map[*watcher]struct{}
}

type object struct {
	rv    uint64
	json  []byte
	field string // a pod's ServiceAccount, which a field selector matches
}

type event struct {
	rv    uint64
	line  []byte // {"type":...,"object":...}\n
	field string
}

type watcher struct {
	ch     chan []byte
	closed bool
	field  string // only events of this field value; every event when ""
}

// Start serves on a free port of 127.0.0.1 until Stop.
func Start() (*Server, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listening: %w", err)
	}
	s := &Server{lis: lis}
	for k := range s.data {
		s.data[k] = &store{objects: map[string]*object{}, watchers: map[*watcher]struct{}{}}
	}
	s.mux = http.NewServeMux()
	for k := range numKinds {
		s.mux.HandleFunc(kinds[k].path, func(w http.ResponseWriter, r *http.Request) { s.serve(k, w, r) })
	}
	// The control plane probes the API server's readiness.
	s.mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok")) })
	count := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		s.mux.ServeHTTP(w, r)
	})
	s.srv = &http.Server{Handler: count, ReadHeaderTimeout: 10 * time.Second}
	go s.srv.Serve(lis)
	return s, nil
}

// URL returns the server's address.
func (s *Server) URL() string { return "http://" + s.lis.Addr().String() }

// RESTConfig returns a client configuration for the server.
func (s *Server) RESTConfig() *rest.Config {
	return &rest.Config{Host: s.URL(), QPS: -1}
}

// WriteKubeconfig writes a kubeconfig that points at the server.
func (s *Server) WriteKubeconfig(path string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["synthetic"] = &clientcmdapi.Cluster{Server: s.URL()}
	cfg.AuthInfos["synthetic"] = &clientcmdapi.AuthInfo{}
	cfg.Contexts["synthetic"] = &clientcmdapi.Context{Cluster: "synthetic", AuthInfo: "synthetic"}
	cfg.CurrentContext = "synthetic"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("writing kubeconfig: %w", err)
	}
	return os.Chmod(path, 0o600)
}

// Stop closes the listener and every connection.
func (s *Server) Stop() {
	s.srv.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, st := range s.data {
		for w := range st.watchers {
			closeWatcher(st, w)
		}
	}
}

// ServeIssuer publishes a service-account issuer's discovery document and
// public keys where kube-apiserver does, so that a control plane verifies
// tokens the simulator signs as it would a real API server's. Call it before
// the first request.
func (s *Server) ServeIssuer(issuer string, keys jose.JSONWebKeySet) error {
	doc, err := json.Marshal(map[string]any{
		"issuer": issuer, "jwks_uri": issuer + "/openid/v1/jwks",
		"response_types_supported": []string{"id_token"}, "subject_types_supported": []string{"public"},
		"id_token_signing_alg_values_supported": []string{"RS256"},
	})
	if err != nil {
		return err
	}
	jwks, err := json.Marshal(keys)
	if err != nil {
		return err
	}
	for path, body := range map[string][]byte{"/.well-known/openid-configuration": doc, "/openid/v1/jwks": jwks} {
		s.mux.HandleFunc(path, func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.Write(body)
		})
	}
	return nil
}

// Requests returns how many HTTP requests the server has received, lists,
// watches and the issuer's documents alike.
func (s *Server) Requests() uint64 { return s.requests.Load() }

// SentBytes returns the bytes of list and watch bodies written so far.
func (s *Server) SentBytes() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n uint64
	for _, b := range s.sent {
		n += b
	}
	return n
}

// Set creates or replaces an object and sends the change to every watch of
// its kind. The server owns obj afterwards: its resourceVersion is set and
// the caller must not change it.
func (s *Server) Set(obj metav1.Object) error {
	st, key, err := s.storeOf(obj)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	typ := "MODIFIED"
	if _, ok := st.objects[key]; !ok {
		typ = "ADDED"
		obj.SetUID(types.UID(fmt.Sprintf("synthetic-%d", s.rv+1)))
		obj.SetCreationTimestamp(metav1.Now())
	}
	s.rv++
	obj.SetResourceVersion(strconv.FormatUint(s.rv, 10))
	b, err := json.Marshal(obj)
	if err != nil {
		return fmt.Errorf("encoding %s: %w", key, err)
	}
	field := fieldOf(obj)
	st.objects[key] = &object{rv: s.rv, json: b, field: field}
	s.publish(st, event{rv: s.rv, line: eventLine(typ, b), field: field})
	return nil
}

// Delete removes an object, if present, and sends the deletion.
func (s *Server) Delete(obj metav1.Object) error {
	st, key, err := s.storeOf(obj)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok := st.objects[key]
	if !ok {
		return nil
	}
	delete(st.objects, key)
	s.rv++
	s.publish(st, event{rv: s.rv, line: eventLine("DELETED", old.json), field: old.field})
	return nil
}

// storeOf returns the store of obj's kind and obj's key in it. The stores
// are made once, by Start: reading s.data needs no lock.
func (s *Server) storeOf(obj metav1.Object) (*store, string, error) {
	k, err := kindOf(obj)
	if err != nil {
		return nil, "", err
	}
	return s.data[k], obj.GetNamespace() + "/" + obj.GetName(), nil
}

func kindOf(obj metav1.Object) (Kind, error) {
	switch o := obj.(type) {
	case *corev1.Node:
		o.APIVersion, o.Kind = "v1", "Node"
		return Nodes, nil
	case *corev1.Service:
		o.APIVersion, o.Kind = "v1", "Service"
		return Services, nil
	case *discoveryv1.EndpointSlice:
		o.APIVersion, o.Kind = "discovery.k8s.io/v1", "EndpointSlice"
		return EndpointSlices, nil
	case *corev1.Pod:
		if o.Namespace != AgentNamespace {
			return 0, fmt.Errorf("synthetic API: pods are served in %s only", AgentNamespace)
		}
		o.APIVersion, o.Kind = "v1", "Pod"
		return Pods, nil
	}
	return 0, fmt.Errorf("synthetic API: %T is not served", obj)
}

// fieldOf returns the value of the field selector an object can be
// selected by: a pod's ServiceAccount.
func fieldOf(obj metav1.Object) string {
	if pod, ok := obj.(*corev1.Pod); ok {
		return pod.Spec.ServiceAccountName
	}
	return ""
}

func eventLine(typ string, obj []byte) []byte {
	b := make([]byte, 0, len(obj)+32)
	b = append(b, `{"type":"`...)
	b = append(b, typ...)
	b = append(b, `","object":`...)
	b = append(b, obj...)
	return append(b, "}\n"...)
}

// publish records an event and hands it to every watcher; a watcher that
// has fallen too far behind is closed and resumes from its last version.
func (s *Server) publish(st *store, e event) {
	st.events = append(st.events, e)
	if len(st.events) > history {
		keep := st.events[len(st.events)-history/2:]
		st.dropped = st.events[len(st.events)-history/2-1].rv
		st.events = append(st.events[:0:0], keep...)
	}
	for w := range st.watchers {
		if w.field != "" && w.field != e.field {
			continue
		}
		select {
		case w.ch <- e.line:
		default:
			closeWatcher(st, w)
		}
	}
}

func closeWatcher(st *store, w *watcher) {
	if !w.closed {
		w.closed = true
		close(w.ch)
	}
	delete(st.watchers, w)
}

func (s *Server) serve(k Kind, w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if r.Method != http.MethodGet {
		writeStatus(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "the synthetic API serves list and watch only")
		return
	}
	field, ok := "", true
	if sel := q.Get("fieldSelector"); sel != "" {
		field, ok = strings.CutPrefix(sel, podAccountField+"=")
		ok = ok && k == Pods && field != ""
	}
	if q.Get("labelSelector") != "" || !ok {
		writeStatus(w, http.StatusBadRequest, "BadRequest", "the synthetic API serves no selectors but "+podAccountField+" on pods")
		return
	}
	if q.Get("watch") == "true" || q.Get("watch") == "1" {
		s.watch(k, field, w, r)
		return
	}
	s.list(k, field, w)
}

func (s *Server) list(k Kind, field string, w http.ResponseWriter) {
	var buf bytes.Buffer
	s.mu.Lock()
	fmt.Fprintf(&buf, `{"apiVersion":%q,"kind":"%sList","metadata":{"resourceVersion":"%d"},"items":[`, kinds[k].apiVersion, kinds[k].kind, s.rv)
	first := true
	for _, o := range s.data[k].objects {
		if field != "" && o.field != field {
			continue
		}
		if !first {
			buf.WriteByte(',')
		}
		first = false
		buf.Write(o.json)
	}
	s.mu.Unlock()
	buf.WriteString("]}\n")
	w.Header().Set("Content-Type", "application/json")
	n, _ := w.Write(buf.Bytes())
	s.count(k, n)
}

func (s *Server) count(k Kind, n int) {
	s.mu.Lock()
	s.sent[k] += uint64(n)
	s.mu.Unlock()
}

func (s *Server) watch(k Kind, field string, w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	ctx := r.Context()
	if t, err := strconv.Atoi(q.Get("timeoutSeconds")); err == nil && t > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(t)*time.Second)
		defer cancel()
	}
	initial := q.Get("sendInitialEvents") == "true"
	rvParam := q.Get("resourceVersion")
	var from uint64
	if rvParam != "" {
		v, err := strconv.ParseUint(rvParam, 10, 64)
		if err != nil {
			writeStatus(w, http.StatusBadRequest, "BadRequest", "bad resourceVersion")
			return
		}
		from = v
	}

	wt := &watcher{ch: make(chan []byte, watcherBuffer), field: field}
	var backlog [][]byte
	s.mu.Lock()
	st := s.data[k]
	switch {
	case initial || from == 0:
		for _, o := range st.objects {
			if field == "" || o.field == field {
				backlog = append(backlog, eventLine("ADDED", o.json))
			}
		}
		if initial {
			backlog = append(backlog, eventLine("BOOKMARK", []byte(fmt.Sprintf(
				`{"apiVersion":%q,"kind":%q,"metadata":{"resourceVersion":"%d","annotations":{%q:"true"}}}`,
				kinds[k].apiVersion, kinds[k].kind, s.rv, metav1.InitialEventsAnnotationKey))))
		}
	case from < st.dropped:
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		w.Write(eventLine("ERROR", statusJSON(http.StatusGone, "Expired", "too old resource version")))
		return
	default:
		for _, e := range st.events {
			if e.rv > from && (field == "" || e.field == field) {
				backlog = append(backlog, e.line)
			}
		}
	}
	st.watchers[wt] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		closeWatcher(st, wt)
		s.mu.Unlock()
	}()

	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Transfer-Encoding", "chunked")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	write := func(line []byte) bool {
		n, err := w.Write(line)
		s.count(k, n)
		return err == nil
	}
	for _, line := range backlog {
		if !write(line) {
			return
		}
	}
	if flusher != nil {
		flusher.Flush()
	}
	for {
		select {
		case <-ctx.Done():
			return
		case line, ok := <-wt.ch:
			if !ok || !write(line) {
				return
			}
			// Write what is queued before flushing: a burst is one flush.
		drain:
			for {
				select {
				case line, ok := <-wt.ch:
					if !ok || !write(line) {
						return
					}
				default:
					break drain
				}
			}
			if flusher != nil {
				flusher.Flush()
			}
		}
	}
}

func statusJSON(code int, reason, msg string) []byte {
	b, _ := json.Marshal(metav1.Status{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Status"},
		Status:   metav1.StatusFailure, Reason: metav1.StatusReason(reason), Message: msg, Code: int32(code),
	})
	return b
}

func writeStatus(w http.ResponseWriter, code int, reason, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(statusJSON(code, reason, msg))
}
