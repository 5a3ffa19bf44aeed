// Command kubeapi runs a real kube-apiserver and etcd (see package kubeapi)
// until it receives SIGINT or SIGTERM, for the local demo and the scale
// simulator. Once the server is ready it writes an admin kubeconfig and
// prints one line to standard output:
//
//	READY kubeconfig=PATH url=URL
//
// Usage:
//
//	go run ./internal/kubeapi/cmd/kubeapi -kubeconfig /tmp/spoke.kubeconfig
//
// Run it from inside the repository: it builds the binaries from hack/.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spoke-proxy/spoke/internal/kubeapi"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("kubeapi: ")
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

func run() error {
	kubeconfig := flag.String("kubeconfig", "", "path to write the admin kubeconfig to (required)")
	dataDir := flag.String("data-dir", "", "directory for data and logs, kept on exit (default: a temporary directory, removed on exit)")
	buildTimeout := flag.Duration("build-timeout", 20*time.Minute, "how long building the binaries may take")
	startTimeout := flag.Duration("start-timeout", 2*time.Minute, "how long starting the server may take")
	flag.Parse()
	if *kubeconfig == "" || flag.NArg() > 0 {
		flag.Usage()
		return errors.New("usage: kubeapi -kubeconfig PATH [-data-dir DIR]")
	}
	path, err := filepath.Abs(*kubeconfig)
	if err != nil {
		return fmt.Errorf("-kubeconfig: %w", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	buildCtx, cancel := context.WithTimeout(ctx, *buildTimeout)
	defer cancel()
	log.Print("building kube-apiserver and etcd (a few minutes the first time)")
	start := time.Now()
	bins, err := kubeapi.Build(buildCtx)
	if err != nil {
		return err
	}
	log.Printf("built in %v", time.Since(start).Round(time.Millisecond))

	startCtx, cancel := context.WithTimeout(ctx, *startTimeout)
	defer cancel()
	start = time.Now()
	s, err := kubeapi.Start(startCtx, kubeapi.Options{Binaries: bins, DataDir: *dataDir})
	if err != nil {
		return err
	}
	defer s.Stop()
	log.Printf("started in %v", time.Since(start).Round(time.Millisecond))

	if err := s.WriteKubeconfig(path); err != nil {
		return err
	}
	etcdLog, apiserverLog := s.LogPaths()
	log.Printf("logs: %s %s", etcdLog, apiserverLog)
	fmt.Printf("READY kubeconfig=%s url=%s\n", path, s.URL)

	<-ctx.Done()
	log.Print("stopping")
	return nil
}
