// Subgroup forms of reductions in reduce.wgsl, compiled only on a device with
// `Features::SUBGROUP` (`Gpu::subgroups`). The pipeline compiles this file after
// reduce.wgsl (`kernels::REDUCE_SUBGROUP`), so these entry points share its bindings and
// routines. naga takes the subgroup builtins without an `enable subgroups;` directive (naga
// 30 rejects the directive as unimplemented); the device feature gates them.
//
// Each form sums in the same order as its fallback, whatever the subgroup size, so the two
// give the same bits and share one CPU twin:
// - reduce_sum_subgroup: reduce_sum's order (strided lane sums, then a pairwise tree with
//   ascending offsets). The levels at offsets below the subgroup size S run as
//   subgroupShuffleXor butterflies: lane i adds lane i^offset's sum to its own, and since
//   a + b and b + a are the same float, lane i and lane i^offset hold the same bits, equal
//   to the tree's partial[min(i, i^offset)]. The levels from S up run in workgroup memory
//   as in reduce_sum. The data goes to lane subgroup_id * S + subgroup_invocation_id, so
//   the tree's pairs are the butterfly's whatever the hardware's lane mapping.
// - column_sum_split_subgroup: column_sum_split's order (per column, 32 strided row sums,
//   then a pairwise tree with ascending offsets), its levels below min(S, 32) as
//   butterflies in the same way.
// - correct_count_subgroup: subgroupAdd of u32 hits (exact in any order), then one
//   atomicAdd per subgroup instead of one per correct row.

// How many of a reduction's lanes one subgroup reduces by itself: the subgroup size where
// the 256 invocations split into full subgroups of a power-of-two size, else 1 (and the
// whole tree runs in workgroup memory). Written by invocation 0 and read back through
// workgroupUniformLoad, so that every invocation takes the same branch.
var<workgroup> rs_subgroup_width: u32;

// The subgroup width for a tree over blocks of `block` lanes (a power of two up to 256):
// min(size, block) where the 256 invocations split into full power-of-two subgroups.
fn subgroup_width(size: u32, count: u32, block: u32) -> u32 {
    let full = size * count == 256u && (size & (size - 1u)) == 0u;
    return select(1u, min(size, block), full);
}

@compute @workgroup_size(256, 1, 1)
fn reduce_sum_subgroup(
    @builtin(local_invocation_index) index: u32,
    @builtin(subgroup_size) size: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) sg_count: u32,
) {
    if (index == 0u) {
        rs_subgroup_width = subgroup_width(size, sg_count, 256u);
    }
    let width = workgroupUniformLoad(&rs_subgroup_width);
    let lane = select(index, sg_id * size + sg_lane, width > 1u);
    var acc = reduce_sum_lane(lane);
    for (var offset = 1u; offset < width; offset = offset << 1u) {
        acc = acc + subgroupShuffleXor(acc, offset);
    }
    if ((lane & (width - 1u)) == 0u) {
        partial[lane] = acc;
    }
    workgroupBarrier();
    reduce_sum_tree(index, width);
}

@compute @workgroup_size(256, 1, 1)
fn column_sum_split_subgroup(
    @builtin(local_invocation_index) index: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(subgroup_size) size: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) sg_count: u32,
) {
    if (index == 0u) {
        rs_subgroup_width = subgroup_width(size, sg_count, 32u);
    }
    let width = workgroupUniformLoad(&rs_subgroup_width);
    let position = select(index, sg_id * size + sg_lane, width > 1u);
    var acc = column_sum_split_lane(group.x, position);
    for (var offset = 1u; offset < width; offset = offset << 1u) {
        acc = acc + subgroupShuffleXor(acc, offset);
    }
    if ((position & (width - 1u)) == 0u) {
        partial[position] = acc;
    }
    workgroupBarrier();
    column_sum_split_tree(group.x, index, width);
}

@compute @workgroup_size(64, 1, 1)
fn correct_count_subgroup(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(subgroup_invocation_id) sg_lane: u32,
) {
    let row = gid.x;
    var hit = 0u;
    if (row < cc_p.rows && cc_prediction(row) == cc_labels[row]) {
        hit = 1u;
    }
    // Every invocation of the workgroup reaches this (none returned early), so the subgroup's
    // lane 0 is live and adds for all of it.
    let hits = subgroupAdd(hit);
    if (sg_lane == 0u && hits != 0u) {
        atomicAdd(&cc_count[0], hits);
    }
}
