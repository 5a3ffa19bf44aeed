package ebpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spoke-proxy/spoke/internal/netns"
)

// Cleanup removes everything a datapath with these options left behind: it
// detaches the cgroup and tc programs (pinned links, and clsact filters on
// every device of opts.NetNS) and removes the pinned maps, which drops
// every service and connection-table entry. Running it when nothing is left
// is not an error.
func Cleanup(opts Options) error {
	opts, err := opts.withDefaults()
	if err != nil {
		return err
	}
	var errs []error
	pins, _ := filepath.Glob(filepath.Join(opts.PinPath, linksDir, "*"))
	for _, pin := range pins {
		if err := unpinLink(pin); err != nil {
			errs = append(errs, fmt.Errorf("unpinning %s: %w", pin, err))
		}
	}
	err = netns.Do(opts.NetNS, func() error {
		links, err := linkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			for _, r := range roles {
				removeFilters(r, l.Attrs().Index)
			}
		}
		return nil
	})
	if err != nil {
		errs = append(errs, fmt.Errorf("removing tc filters: %w", err))
	}
	if err := os.RemoveAll(opts.PinPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("removing pins: %w", err))
	}
	return errors.Join(errs...)
}
