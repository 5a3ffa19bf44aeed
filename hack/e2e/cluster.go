package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// The layout of the cluster `make cluster` runs (hack/cluster): each node's
// containerd listens on a socket under the cluster's work directory.
const nodeSocketGlob = "/run/spoke-cluster/node-*/containerd/containerd.sock"

// cluster is a `make cluster` this command started.
type cluster struct {
	cmd        *exec.Cmd
	kubeconfig string
	done       chan error
}

// startCluster runs `make cluster` and waits for its READY line.
func startCluster(ctx context.Context, flags string, log *slog.Logger) (*cluster, error) {
	log.Info("starting make cluster (the first build takes many minutes)", "flags", flags)
	cmd := exec.Command("make", "cluster", "CLUSTER_FLAGS="+flags)
	cmd.Stderr = os.Stderr
	// Its own process group: stop() interrupts make and everything under
	// it, as Ctrl-C does.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &cluster{cmd: cmd, done: make(chan error, 1)}
	ready := make(chan string, 1)
	go func() {
		ready <- scanReady(out)
		io.Copy(os.Stderr, out)
	}()
	go func() { c.done <- cmd.Wait() }()
	select {
	case c.kubeconfig = <-ready:
		if c.kubeconfig != "" {
			log.Info("cluster ready", "kubeconfig", c.kubeconfig)
			return c, nil
		}
		err = errors.New("make cluster ended without a READY line")
	case <-ctx.Done():
		err = ctx.Err()
	}
	return nil, errors.Join(err, c.stop(log))
}

// scanReady copies make cluster's output to stderr until the line
// "READY kubeconfig=PATH nodes=N" and returns PATH ("" if none came).
func scanReady(r io.Reader) string {
	s := bufio.NewScanner(r)
	for s.Scan() {
		line := s.Text()
		fmt.Fprintln(os.Stderr, line)
		if rest, ok := strings.CutPrefix(line, "READY "); ok {
			for _, f := range strings.Fields(rest) {
				if v, ok := strings.CutPrefix(f, "kubeconfig="); ok {
					return v
				}
			}
		}
	}
	return ""
}

// stop interrupts make cluster, which then removes everything it made.
func (c *cluster) stop(log *slog.Logger) error {
	log.Info("stopping the cluster")
	if err := syscall.Kill(-c.cmd.Process.Pid, syscall.SIGINT); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	select {
	case err := <-c.done:
		var exit *exec.ExitError
		if errors.As(err, &exit) && exit.ExitCode() != 0 {
			return fmt.Errorf("make cluster: %w", err)
		}
		return nil
	case <-time.After(3 * time.Minute):
		syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		return errors.New("make cluster did not stop within 3 minutes; killed")
	}
}

// importImages imports the image tarballs into every node's containerd with
// the ctr that comes with the running containerd.
func importImages(ctx context.Context, tars []string, log *slog.Logger) error {
	sockets, err := filepath.Glob(nodeSocketGlob)
	if err != nil {
		return err
	}
	if len(sockets) == 0 {
		return fmt.Errorf("no node containerd socket matches %s: is the cluster one make cluster runs?", nodeSocketGlob)
	}
	ctr, err := findCtr()
	if err != nil {
		return err
	}
	for _, sock := range sockets {
		for _, t := range tars {
			log.Info("importing image", "node", filepath.Base(filepath.Dir(filepath.Dir(sock))), "image", filepath.Base(t))
			cmd := exec.CommandContext(ctx, ctr, "-a", sock, "-n", "k8s.io", "images", "import", "--platform", "linux/amd64", t)
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("importing %s into %s: %w\n%s", t, sock, err, out)
			}
		}
	}
	return nil
}

// findCtr returns the ctr next to a running containerd's executable (the
// cluster installs containerd, its shim and ctr together).
func findCtr() (string, error) {
	exes, _ := filepath.Glob("/proc/[0-9]*/exe")
	for _, e := range exes {
		exe, err := os.Readlink(e)
		if err != nil || filepath.Base(exe) != "containerd" {
			continue
		}
		ctr := filepath.Join(filepath.Dir(exe), "ctr")
		if _, err := os.Stat(ctr); err == nil {
			return ctr, nil
		}
	}
	return "", errors.New("no running containerd with a ctr beside it")
}
