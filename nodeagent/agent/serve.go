package agent

import (
	"encoding/json"
	"net/http"
	"time"

	"google.golang.org/grpc"

	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// Register registers the inspection service on g.
func (a *Agent) Register(g *grpc.Server) {
	spokev1.RegisterAgentInspectionServiceServer(g, a)
}

// HealthzHandler answers as kube-proxy's /healthz does: 200 with the time of
// the last update once the datapath holds the agent's state, 503 before.
func (a *Agent) HealthzHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		a.mu.Lock()
		ready, last := a.restored, a.cacheAppliedAt
		a.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		if !ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		json.NewEncoder(w).Encode(struct {
			LastUpdated time.Time `json:"lastUpdated"`
			CurrentTime time.Time `json:"currentTime"`
			NodeHealthy bool      `json:"nodeHealthy"`
		}{last, time.Now(), ready})
	})
}
