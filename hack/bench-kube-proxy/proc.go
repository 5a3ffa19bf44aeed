package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spoke-proxy/spoke/internal/netns"
	"github.com/spoke-proxy/spoke/internal/process"
)

// proc is a child process running in a node's namespace and cgroup.
type proc struct{ *process.Process }

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
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	p, err := process.Start(name, cmd, filepath.Join(b.dir, name+".log"))
	if err != nil {
		return nil, err
	}
	return &proc{p}, nil
}

// stop sends SIGTERM to the process group, then SIGKILL after 10 s.
func (p *proc) stop() { p.Stop(10 * time.Second) }

// rssBytes is the process's resident set size.
func (p *proc) rssBytes() float64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", p.Cmd.Process.Pid))
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
