package main

import (
	"log/slog"
	"maps"
	"slices"
	"sync"

	"github.com/spoke-proxy/spoke/nodeagent/healthcheck"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// healthChecks keeps the health-check node ports equal to the services the
// datapath holds.
type healthChecks struct {
	server *healthcheck.Server
	log    *slog.Logger

	mu       sync.Mutex
	services map[string]*spokev1.Service
}

func newHealthChecks(server *healthcheck.Server, log *slog.Logger) *healthChecks {
	return &healthChecks{server: server, log: log, services: map[string]*spokev1.Service{}}
}

// applied is the agent's OnApplied hook: it records what the datapath now
// holds and opens or closes ports to match.
func (h *healthChecks) applied(applied []*spokev1.Resource, removed []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, r := range applied {
		// The agent decoded and checked every resource it applied.
		if s := r.GetService(); s != nil {
			h.services[r.GetName()] = s
		}
	}
	for _, name := range removed {
		delete(h.services, name)
	}
	if err := h.server.Sync(healthcheck.Services(slices.Collect(maps.Values(h.services)))); err != nil {
		h.log.Warn("health-check node ports", "err", err)
	}
}
