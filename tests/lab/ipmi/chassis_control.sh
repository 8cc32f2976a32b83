#!/bin/sh
# Chassis control for ipmi_sim (GLORY-CL power tests).
#
# ipmi_sim calls:  chassis_control.sh STATEDIR get  [parm ...]
#                  chassis_control.sh STATEDIR set  [parm val ...]
#                  chassis_control.sh STATEDIR check
# (STATEDIR comes from the chassis_control line of lan.conf; ipmi_sim appends the rest.)
# parm is power (1/0), reset (pulse), boot (none/pxe/default/...), identify.
# "get" prints "parm:value" per parm. The state lives in STATEDIR/power, STATEDIR/boot,
# and every set is appended to STATEDIR/chassis.log so tests can see what happened.
statedir=$1
op=$2
if [ -z "$statedir" ] || [ -z "$op" ]; then
    echo "usage: $0 STATEDIR get|set|check ..." >&2
    exit 1
fi
shift 2

power_file="$statedir/power"
boot_file="$statedir/boot"
log="$statedir/chassis.log"

get_power() {
    # A machine starts powered off until someone turns it on (or the test writes 1).
    if [ -f "$power_file" ]; then cat "$power_file"; else echo 0; fi
}

case $op in
get)
    while [ -n "$1" ]; do
        case $1 in
        power) val=$(get_power) ;;
        boot) if [ -f "$boot_file" ]; then val=$(cat "$boot_file"); else val=default; fi ;;
        *) echo "invalid get parameter: $1" ; exit 1 ;;
        esac
        echo "$1:$val"
        shift
    done
    ;;
set)
    while [ -n "$1" ]; do
        parm=$1
        val=$2
        if [ -z "$val" ]; then echo "no value for $parm"; exit 1; fi
        shift 2
        echo "$(date +%s) set $parm $val" >>"$log"
        case $parm in
        power)
            case $val in
            0|1) echo "$val" >"$power_file" ;;
            *) echo "invalid power value: $val"; exit 1 ;;
            esac
            ;;
        reset) ;;
        boot)
            case $val in
            none|pxe|cdrom|bios|default) echo "$val" >"$boot_file" ;;
            *) echo "invalid boot value: $val"; exit 1 ;;
            esac
            ;;
        identify) shift ;; # interval, then force
        *) echo "invalid set parameter: $parm"; exit 1 ;;
        esac
    done
    ;;
check) exit 1 ;;
*) echo "unknown operation: $op"; exit 1 ;;
esac
exit 0
