// Package apiproxy is a proxy between a client and a real kube-apiserver
// that freezes watch streams of chosen resources while every other request
// is answered: the fault of a watch stuck in the server or in a load
// balancer on the way, which no error reports. For tests.
//
// It speaks HTTP, not TCP: client-go sends every request of a client over
// one HTTP/2 connection, so a proxy of bytes could only freeze all of them
// or none. The proxy serves plain HTTP on 127.0.0.1 and forwards to the API
// server with the credentials of the rest.Config it is given, so its
// clients need none.
//
// Besides freezing, it can answer watches 410 Gone (Gone) and act as an API
// server that is down (Block).
//
// Caveats: a frozen stream neither forwards nor is closed; thawing it
// forwards what the server sent meanwhile (as a proxy whose buffers
// drained would). Clients see HTTP/1.1, one connection per watch.
package apiproxy

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Proxy forwards requests to an API server; see the package comment.
type Proxy struct {
	srv *httptest.Server
	// stop ends every request in flight: a watch through the proxy lasts
	// minutes, and its client reconnects at once.
	stop context.CancelFunc

	mu       sync.Mutex
	frozen   map[string]chan struct{} // resource -> closed when thawed
	held     map[string]int           // watch responses waiting, by resource
	gone     map[string]int           // watch requests still to answer 410 Gone
	goneSent map[string]int
	blocked  bool
}

// New starts a proxy to the API server cfg names.
func New(cfg *rest.Config) (*Proxy, error) {
	target, err := url.Parse(cfg.Host)
	if err != nil {
		return nil, fmt.Errorf("API server address %q: %w", cfg.Host, err)
	}
	transport, err := rest.TransportFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("API server transport: %w", err)
	}
	p := &Proxy{frozen: map[string]chan struct{}{}, held: map[string]int{}, gone: map[string]int{}, goneSent: map[string]int{}}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = transport
	rp.FlushInterval = -1 // watch events go out as they come
	p.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p.isBlocked() {
			// As a server that is down: the connection ends unanswered.
			if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
				c.Close()
			}
			return
		}
		if r.URL.Query().Get("watch") == "true" || r.URL.Query().Get("watch") == "1" {
			resource := resourceOf(r.URL.Path)
			if p.takeGone(resource) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusGone)
				fmt.Fprint(w, goneStatus)
				return
			}
			w = &freezable{ResponseWriter: w, p: p, resource: resource, r: r}
		}
		rp.ServeHTTP(w, r)
	}))
	ctx, stop := context.WithCancel(context.Background())
	p.stop = stop
	p.srv.Config.BaseContext = func(net.Listener) context.Context { return ctx }
	p.srv.Start()
	return p, nil
}

// Config returns a client configuration that reaches the API server
// through the proxy.
func (p *Proxy) Config() *rest.Config {
	return &rest.Config{Host: p.srv.URL, QPS: 200, Burst: 400}
}

// Freeze holds the watch responses of resource (as the API names it:
// "services", "endpointslices", "nodes"), those open and those to come:
// nothing more of them reaches the client until Thaw.
func (p *Proxy) Freeze(resource string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.frozen[resource]; !ok {
		p.frozen[resource] = make(chan struct{})
	}
}

// Thaw lets the watch responses of resource flow again.
func (p *Proxy) Thaw(resource string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ch, ok := p.frozen[resource]; ok {
		close(ch)
		delete(p.frozen, resource)
	}
}

// goneStatus is what kube-apiserver answers a watch from a resourceVersion
// it no longer has (compacted, or older than its watch cache).
const goneStatus = `{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version","reason":"Expired","code":410}`

// Gone makes the next n watch requests of resource fail with 410 Gone, as
// after a compaction: the client must list again.
func (p *Proxy) Gone(resource string, n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.gone[resource] += n
}

// GoneSent returns how many watch requests of resource were answered 410.
func (p *Proxy) GoneSent(resource string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.goneSent[resource]
}

func (p *Proxy) takeGone(resource string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.gone[resource] == 0 {
		return false
	}
	p.gone[resource]--
	p.goneSent[resource]++
	return true
}

// Block makes the API server unreachable through the proxy, as if it were
// down: open connections are closed and new requests end unanswered, until
// Unblock.
func (p *Proxy) Block() {
	p.mu.Lock()
	p.blocked = true
	p.mu.Unlock()
	p.srv.CloseClientConnections()
}

// Unblock lets requests through again.
func (p *Proxy) Unblock() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blocked = false
}

func (p *Proxy) isBlocked() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.blocked
}

// WriteKubeconfig writes a kubeconfig file that reaches the API server
// through the proxy, for a client in another process.
func (p *Proxy) WriteKubeconfig(path string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["proxy"] = &clientcmdapi.Cluster{Server: p.srv.URL}
	cfg.AuthInfos["proxy"] = &clientcmdapi.AuthInfo{}
	cfg.Contexts["proxy"] = &clientcmdapi.Context{Cluster: "proxy", AuthInfo: "proxy"}
	cfg.CurrentContext = "proxy"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("writing kubeconfig: %w", err)
	}
	return nil
}

// Held returns how many watch responses of resource are waiting to be
// thawed.
func (p *Proxy) Held(resource string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.held[resource]
}

// Close ends every request in flight and stops the proxy; its clients
// then find no server.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.blocked = true
	p.mu.Unlock()
	p.stop()
	p.srv.CloseClientConnections()
	p.srv.Close()
}

// wait blocks while resource is frozen, or until the request ends.
func (p *Proxy) wait(resource string, r *http.Request) {
	for {
		p.mu.Lock()
		ch, ok := p.frozen[resource]
		if ok {
			p.held[resource]++
		}
		p.mu.Unlock()
		if !ok {
			return
		}
		select {
		case <-ch:
		case <-r.Context().Done():
		}
		p.mu.Lock()
		p.held[resource]--
		p.mu.Unlock()
		if r.Context().Err() != nil {
			return
		}
	}
}

// resourceOf returns the resource of an API path: the segment after
// "namespaces/NS/" or the version, e.g. "endpointslices" in
// /apis/discovery.k8s.io/v1/endpointslices.
func resourceOf(path string) string {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	start := 2 // api/v1/...
	if len(parts) > 0 && parts[0] == "apis" {
		start = 3 // apis/GROUP/v1/...
	}
	if len(parts) > start+1 && parts[start] == "namespaces" {
		start += 2
	}
	if len(parts) <= start {
		return ""
	}
	return parts[start]
}

// freezable is a watch response that stops at its next write while its
// resource is frozen.
type freezable struct {
	http.ResponseWriter
	p        *Proxy
	resource string
	r        *http.Request
}

func (f *freezable) WriteHeader(code int) {
	f.p.wait(f.resource, f.r)
	f.ResponseWriter.WriteHeader(code)
}

func (f *freezable) Write(b []byte) (int, error) {
	f.p.wait(f.resource, f.r)
	return f.ResponseWriter.Write(b)
}

func (f *freezable) Flush() {
	f.p.wait(f.resource, f.r)
	if fl, ok := f.ResponseWriter.(http.Flusher); ok {
		fl.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection.
func (f *freezable) Unwrap() http.ResponseWriter { return f.ResponseWriter }
