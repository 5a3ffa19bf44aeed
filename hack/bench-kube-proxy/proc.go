package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spoke-proxy/spoke/internal/netns"
)

// proc is a child process running in a node's namespace and cgroup.
type proc struct {
	name    string
	cmd     *exec.Cmd
	started time.Time
	log     string
	done    chan struct{}
}

// start runs path with args inside ns (through nsenter) and in the cgroup
// folder cg, in a process group of its own, its output in the log file
// name.log.
func (b *bench) start(cg string, ns *netns.NS, name, path string, args ...string) (*proc, error) {
	return b.startCmd(cg, name, nsCmd(ns, path, args...))
}

// nsCmd runs path with args inside ns.
func nsCmd(ns *netns.NS, path string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + ns.Path(), "--", path}, args...)...)
}

func (b *bench) startCmd(cgroupDir, name string, cmd *exec.Cmd) (*proc, error) {
	cg, err := os.Open(cgroupDir)
	if err != nil {
		return nil, err
	}
	defer cg.Close()
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	p.log = filepath.Join(b.dir, p.name+".log")
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	if cmd.Stdout == nil {
		cmd.Stdout = f
	}
	cmd.Stderr = f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	p.started = time.Now()
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s: %w", p.name, err)
	}
	go func() {
		cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, then SIGKILL after 10 s.
func (p *proc) stop() {
	if p.exited() {
		return
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

// logTail returns the end of the process's log, for errors.
func (p *proc) logTail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(bytes.TrimSpace(b))
}

// rssBytes is the process's resident set size.
func (p *proc) rssBytes() float64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb * 1024
		}
	}
	return 0
}

// cpuSeconds is the CPU time used by every process that ran in a cgroup
// (children such as nft and iptables-restore included).
func cpuSeconds(cgroup string) float64 {
	b, err := os.ReadFile(filepath.Join(cgroup, "cpu.stat"))
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "usage_usec "); ok {
			us, _ := strconv.ParseFloat(rest, 64)
			return us / 1e6
		}
	}
	return 0
}
