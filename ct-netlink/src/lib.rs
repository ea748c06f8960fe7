//! An async ctnetlink client (netfilter's conntrack netlink interface).
