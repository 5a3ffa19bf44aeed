// Command probe is the one binary of the cluster's own images: the pod
// sandbox's pause process, and the HTTP server and client make cluster's
// check runs in pods.
//
//	probe pause          wait for SIGTERM or SIGINT, reaping children
//	probe serve ADDR     answer every HTTP request with the pod's name
//	probe get URL        print the body of a GET (exit 1 on failure)
//	probe hold URL DUR   GET every 100 ms for DUR over one connection; print
//	                     the counts, exit 1 on any failure or reconnection
package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: probe pause | serve ADDR | get URL")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "pause":
		pause()
	case "serve":
		err = serve(arg(2))
	case "get":
		err = get(arg(2))
	case "hold":
		err = hold(arg(2), arg(3))
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func arg(i int) string {
	if len(os.Args) <= i {
		fmt.Fprintln(os.Stderr, "missing argument")
		os.Exit(2)
	}
	return os.Args[i]
}

func pause() {
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sig {
		if s != syscall.SIGCHLD {
			return
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}

func serve(addr string) error {
	host, _ := os.Hostname()
	srv := &http.Server{
		Addr: addr,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprintln(w, host)
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.ListenAndServe(); err != http.ErrServerClosed {
		return err
	}
	return nil
}

func get(url string) error {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	fmt.Print(string(body))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}

// hold keeps one TCP connection to url for the duration and sends a request
// on it every 100 ms. It fails if a request fails or if the connection had
// to be replaced: a connection through a service that survives restarts
// of the proxy keeps its first TCP connection throughout.
func hold(url, duration string) error {
	d, err := time.ParseDuration(duration)
	if err != nil {
		return err
	}
	c := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1, IdleConnTimeout: time.Hour},
	}
	var requests, failed, conns int
	var firstErr error
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		if !info.Reused {
			conns++
		}
	}}
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		requests++
		req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := c.Do(req)
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("%s", resp.Status)
			}
		}
		if err != nil {
			failed++
			if firstErr == nil {
				firstErr = fmt.Errorf("request %d at %s: %w", requests, time.Now().Format(time.TimeOnly), err)
			}
		}
	}
	fmt.Printf("requests=%d failed=%d connections=%d\n", requests, failed, conns)
	if firstErr != nil {
		return firstErr
	}
	if conns != 1 {
		return fmt.Errorf("the connection was replaced %d times", conns-1)
	}
	return nil
}
