// The subgroup forms of softmax_split and softmax_cross_entropy_split (loss.wgsl), compiled
// after loss.wgsl (`kernels::LOSS_SUBGROUP`) and only on a device with `Features::SUBGROUP`. Same order as
// the workgroup forms, whatever the subgroup size S: the max and the sum's tree levels below
// min(S, 32) run as subgroupShuffleXor butterflies (lane i combines with lane i^offset;
// max and + commute, so both lanes hold the tree's value for the pair), the levels above in
// workgroup memory; positions are subgroup_id * S + subgroup_invocation_id, and the shader
// falls back to the workgroup tree where subgroups are not full or not a power of two.

var<workgroup> sm_subgroup_width: u32;

@compute @workgroup_size(256, 1, 1)
fn softmax_split_subgroup(
    @builtin(local_invocation_index) index: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(subgroup_size) size: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) sg_count: u32,
) {
    if (index == 0u) {
        let full = size * sg_count == 256u && (size & (size - 1u)) == 0u;
        sm_subgroup_width = select(1u, min(size, 32u), full);
    }
    let width = workgroupUniformLoad(&sm_subgroup_width);
    let position = select(index, sg_id * size + sg_lane, width > 1u);
    var m = softmax_split_lane_max(group.x, position);
    for (var offset = 1u; offset < width; offset = offset << 1u) {
        m = max(m, subgroupShuffleXor(m, offset));
    }
    if ((position & (width - 1u)) == 0u) {
        sm_partial[position] = m;
    }
    workgroupBarrier();
    softmax_split_levels(index, width, true);
    m = sm_partial[position & ~31u];
    workgroupBarrier();
    var s = softmax_split_lane_sum(group.x, position, m);
    for (var offset = 1u; offset < width; offset = offset << 1u) {
        s = s + subgroupShuffleXor(s, offset);
    }
    if ((position & (width - 1u)) == 0u) {
        sm_partial[position] = s;
    }
    workgroupBarrier();
    softmax_split_levels(index, width, false);
    softmax_split_store(group.x, position, m, sm_partial[position & ~31u]);
}

// softmax_cross_entropy_split with the same subgroup levels as softmax_split_subgroup (same
// order, same bits as the workgroup form).
@compute @workgroup_size(256, 1, 1)
fn softmax_cross_entropy_split_subgroup(
    @builtin(local_invocation_index) index: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(subgroup_size) size: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) sg_count: u32,
) {
    if (index == 0u) {
        let full = size * sg_count == 256u && (size & (size - 1u)) == 0u;
        sm_subgroup_width = select(1u, min(size, 32u), full);
    }
    let width = workgroupUniformLoad(&sm_subgroup_width);
    let position = select(index, sg_id * size + sg_lane, width > 1u);
    var m = ce_split_lane_max(group.x, position);
    for (var offset = 1u; offset < width; offset = offset << 1u) {
        m = max(m, subgroupShuffleXor(m, offset));
    }
    if ((position & (width - 1u)) == 0u) {
        sm_partial[position] = m;
    }
    workgroupBarrier();
    softmax_split_levels(index, width, true);
    m = sm_partial[position & ~31u];
    workgroupBarrier();
    var s = ce_split_lane_sum(group.x, position, m);
    for (var offset = 1u; offset < width; offset = offset << 1u) {
        s = s + subgroupShuffleXor(s, offset);
    }
    if ((position & (width - 1u)) == 0u) {
        sm_partial[position] = s;
    }
    workgroupBarrier();
    softmax_split_levels(index, width, false);
    ce_split_store(group.x, position, m, sm_partial[position & ~31u]);
}
