// Command etcd is a single-member etcd server built from go.etcd.io/etcd's
// embed package, for integration tests and the local demo.
package main

import (
	"context"
	"flag"
	"log"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

func main() {
	cfg := embed.NewConfig()
	flag.StringVar(&cfg.Dir, "data-dir", "", "directory for etcd's data (required)")
	clientURL := flag.String("listen-client-urls", "http://127.0.0.1:2379", "URL to serve clients on")
	advertiseURL := flag.String("advertise-client-urls", "", "client URL to advertise (default: --listen-client-urls)")
	peerURL := flag.String("listen-peer-urls", "http://127.0.0.1:2380", "URL to serve peers on; also advertised")
	flag.BoolVar(&cfg.UnsafeNoFsync, "unsafe-no-fsync", false, "skip fsync: faster, loses data on a machine crash")
	flag.Parse()
	if cfg.Dir == "" {
		log.Fatal("--data-dir is required")
	}

	if *advertiseURL == "" {
		*advertiseURL = *clientURL
	}
	client, err := url.Parse(*clientURL)
	if err != nil {
		log.Fatalf("--listen-client-urls: %v", err)
	}
	advertise, err := url.Parse(*advertiseURL)
	if err != nil {
		log.Fatalf("--advertise-client-urls: %v", err)
	}
	peer, err := url.Parse(*peerURL)
	if err != nil {
		log.Fatalf("--listen-peer-urls: %v", err)
	}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*client}, []url.URL{*advertise}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		log.Fatalf("starting etcd: %v", err)
	}
	defer e.Close()

	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(time.Minute):
		log.Fatal("etcd was not ready within a minute")
	}

	select {
	case <-ctx.Done():
	case err := <-e.Err():
		log.Fatalf("etcd: %v", err)
	}
}
