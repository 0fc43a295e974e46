# PSPNet-R50 (dilated, 1/8 output) on ADE20K with image-guided output upsampling by
# NAF: the head's 512-channel features go from 1/8 to full resolution in one attention
# step guided by the normalised image, and are classified there. The head is mmseg's
# PSPHead, unchanged; everything else is mmseg's recipe. NAF trains with the segmentor
# from random weights; to start from the published ones, add
# init_cfg=dict(type='Pretrained', checkpoint=...) to output_upsampler (weights from
# tools/convert_attention_upsampler_checkpoint.py).
_base_ = ['mmseg::pspnet/pspnet_r50-d8_4xb4-160k_ade20k-512x512.py']
custom_imports = dict(imports=['featup_mmseg.plugin'], allow_failed_imports=False)

model = dict(
    type='GuidedEncoderDecoder',
    output_upsampler=dict(
        type='ImageGuidedOutputUpsampler', out_stride=1, upsampler=dict(type='NAF')))
