package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

// cpProfiles takes profiles of a control plane that runs as a child
// process, from its /debug/pprof/ endpoint (it runs with -profiling), so
// that they hold the control plane's work alone.
type cpProfiles struct {
	cpu, heap string
	// cpuDone is closed when the CPU profile is written.
	cpuDone chan error
}

// startCPU starts a CPU profile of the control plane over d, written to
// the --controlplane-cpuprofile file.
func (s *sim) startCPUProfile(ctx context.Context, d time.Duration) {
	p := &s.cpProf
	if p.cpu == "" {
		return
	}
	url, err := s.pprofURL("profile?seconds=" + fmt.Sprint(max(1, int(d.Seconds()))))
	p.cpuDone = make(chan error, 1)
	if err != nil {
		p.cpuDone <- err
		return
	}
	go func() { p.cpuDone <- fetchTo(ctx, url, p.cpu, d+time.Minute) }()
}

// finishProfiles waits for the CPU profile and writes the heap profile.
func (s *sim) finishProfiles(ctx context.Context) error {
	p := &s.cpProf
	if p.cpuDone != nil {
		if err := <-p.cpuDone; err != nil {
			return fmt.Errorf("control-plane CPU profile: %w", err)
		}
		p.cpuDone = nil
	}
	if p.heap == "" {
		return nil
	}
	url, err := s.pprofURL("heap")
	if err == nil {
		err = fetchTo(ctx, url, p.heap, time.Minute)
	}
	if err != nil {
		return fmt.Errorf("control-plane heap profile: %w", err)
	}
	return nil
}

func (s *sim) pprofURL(what string) (string, error) {
	p, ok := s.cp.(*processCP)
	if !ok {
		return "", fmt.Errorf("profiles are taken of a control plane in its own process (--controlplane process), not %q", s.c.controlplane)
	}
	return "http://" + p.metricsAddr + "/debug/pprof/" + what, nil
}

func fetchTo(ctx context.Context, url, path string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
